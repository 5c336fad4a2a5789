"""One `/metrics` for a run spread over processes, gathered when it is scraped.

    scrape ─► MetricsHub.collect() ─► this process's hillclimb_* families        source="driver"
                                   └► actor.metrics.remote() for each watched     source="worker-0", "buffer", ...
                                      actor (rollout workers and their pools,
                                      the trajectory buffer), in parallel
             families merged by name, each sample labelled with its source

Sandbox pools live inside rollout-worker actors, the buffer in an actor of its own: their
Prometheus registries are in other processes, so the driver asks each for its figures at
scrape time instead of serving only its own. An actor that does not answer within
`timeout_s` (busy, or dead and not yet replaced), or fails to, is left out of that scrape and
counted in `hillclimb_metrics_scrape_failures_total{actor, cause}`; the log says so at most once
a minute per cause, however often Prometheus scrapes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import REGISTRY

log = logging.getLogger("hillclimb.orchestrator.metrics")

PREFIX = "hillclimb_"
LOG_EVERY_S = 60.0
"""Scrapes that leave actors out are logged at most this often per cause (the counter has each)."""

SCRAPE_FAILURES = Counter(
    "hillclimb_metrics_scrape_failures_total",
    "Scrapes that left an actor's figures out, by cause: timeout (no answer in time) or error (it failed).",
    ["actor", "cause"],
)

Cause = Literal["timeout", "error"]


def local_families() -> list[Metric]:
    """This process's hillclimb_* metric families (what an actor's `metrics()` returns)."""
    return [family for family in REGISTRY.collect() if family.name.startswith(PREFIX)]


class LogThrottle:
    """Admits one log line per key every `interval_s` of `clock`, and counts those it held back."""

    def __init__(self, interval_s: float, clock: Callable[[], float]) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def admit(self, key: str) -> int | None:
        """None: hold this line back; else log it, with how many were held back since the last."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._held.pop(key, 0)


class MetricsHub:
    """A Prometheus collector over this process and the Ray actors it watches."""

    def __init__(self, timeout_s: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout_s = timeout_s
        self._actors: dict[str, Any] = {}
        self._lock = threading.Lock()  # scrapes run on the HTTP server's thread
        self._log_throttle = LogThrottle(LOG_EVERY_S, clock)

    def watch(self, source: str, actor: Any) -> None:
        """Include `actor` (anything with a remote `metrics()` method) as `source`, replacing
        an earlier actor of that name (a restarted worker)."""
        with self._lock:
            self._actors[source] = actor

    def forget(self, source: str) -> None:
        with self._lock:
            self._actors.pop(source, None)

    def collect(self) -> Iterator[Metric]:
        remote = self._remote_families()  # first: it counts its failures into this process's figures
        merged: dict[str, Metric] = {}
        for source, families in [("driver", local_families()), *remote]:
            for family in families:
                into = merged.setdefault(family.name, Metric(family.name, family.documentation, family.type))
                into.samples.extend(s._replace(labels={**s.labels, "source": source}) for s in family.samples)
        yield from merged.values()

    def _remote_families(self) -> list[tuple[str, list[Metric]]]:
        with self._lock:
            actors = dict(self._actors)
        if not actors:
            return []
        import ray

        refs = {source: actor.metrics.remote() for source, actor in actors.items()}
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=self.timeout_s)
        answered = set(ready)
        gathered = []
        failed: dict[Cause, dict[str, str]] = {"timeout": {}, "error": {}}
        for source, ref in refs.items():
            if ref not in answered:
                failed["timeout"][source] = f"no answer within {self.timeout_s:g} s"
                continue
            try:
                gathered.append((source, ray.get(ref)))
            except ray.exceptions.RayError as e:
                failed["error"][source] = _reason(getattr(e, "cause", None) or e)  # a task error: the actor's own
        for cause, sources in failed.items():
            self._left_out(cause, sources)
        return gathered

    def _left_out(self, cause: Cause, sources: dict[str, str]) -> None:
        """Count each actor left out of this scrape; log it unless a line for `cause` went out within the minute."""
        if not sources:
            return
        for source in sources:
            SCRAPE_FAILURES.labels(actor=source, cause=cause).inc()
        with self._lock:  # scrapes may overlap, each on a thread of its own
            held = self._log_throttle.admit(cause)
        if held is None:
            return
        since = f"; {held} more such scrape(s) since the last line" if held else ""
        log.warning(
            "metrics: left out of a scrape: %s (hillclimb_metrics_scrape_failures_total counts each; this line comes"
            " at most every %g s%s)",
            ", ".join(f"{source}: {why}" for source, why in sources.items()),
            LOG_EVERY_S,
            since,
        )


def _reason(error: BaseException) -> str:
    """`ValueError: its first line`, short enough for one log line."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:200]}" if lines else type(error).__name__


HUB = MetricsHub()
"""The driver process's hub: rollout drivers and trainers register their actors here."""


def serve_metrics(port: int, addr: str = "127.0.0.1", hub: MetricsHub = HUB) -> str:
    """Expose the hub's `/metrics` over HTTP (a daemon thread) on `port` (0: a free one); its URL."""
    registry = CollectorRegistry()
    registry.register(hub)
    server, _ = start_http_server(port, addr=addr, registry=registry)
    return f"http://{addr}:{server.server_port}/metrics"
