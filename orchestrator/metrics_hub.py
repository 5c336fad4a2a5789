"""One `/metrics` for a run spread over processes, gathered when it is scraped.

    scrape ─► MetricsHub.collect() ─► this process's hillclimb_* families        source="driver"
                                   └► actor.metrics.remote() for each watched     source="worker-0", "buffer", ...
                                      actor (rollout workers and their pools,
                                      the trajectory buffer), in parallel
             families merged by name, each sample labelled with its source

Sandbox pools live inside rollout-worker actors, the buffer in an actor of its own: their
Prometheus registries are in other processes, so the driver asks each for its figures at
scrape time instead of serving only its own. An actor that does not answer within
`timeout_s` (busy, or dead and not yet replaced) is left out of that scrape and logged.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import REGISTRY

log = logging.getLogger("hillclimb.orchestrator.metrics")

PREFIX = "hillclimb_"


def local_families() -> list[Metric]:
    """This process's hillclimb_* metric families (what an actor's `metrics()` returns)."""
    return [family for family in REGISTRY.collect() if family.name.startswith(PREFIX)]


class MetricsHub:
    """A Prometheus collector over this process and the Ray actors it watches."""

    def __init__(self, timeout_s: float = 2.0) -> None:
        self.timeout_s = timeout_s
        self._actors: dict[str, Any] = {}
        self._lock = threading.Lock()  # scrapes run on the HTTP server's thread

    def watch(self, source: str, actor: Any) -> None:
        """Include `actor` (anything with a remote `metrics()` method) as `source`, replacing
        an earlier actor of that name (a restarted worker)."""
        with self._lock:
            self._actors[source] = actor

    def forget(self, source: str) -> None:
        with self._lock:
            self._actors.pop(source, None)

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for source, families in [("driver", local_families()), *self._remote_families()]:
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
        for source, ref in refs.items():
            if ref not in answered:
                log.warning("metrics: %s did not answer within %g s; left out of this scrape", source, self.timeout_s)
                continue
            try:
                gathered.append((source, ray.get(ref)))
            except ray.exceptions.RayError as e:
                log.warning("metrics: %s failed to report: %s", source, e)
        return gathered


HUB = MetricsHub()
"""The driver process's hub: rollout drivers and trainers register their actors here."""


def serve_metrics(port: int, addr: str = "127.0.0.1", hub: MetricsHub = HUB) -> str:
    """Expose the hub's `/metrics` over HTTP (a daemon thread) on `port` (0: a free one); its URL."""
    registry = CollectorRegistry()
    registry.register(hub)
    server, _ = start_http_server(port, addr=addr, registry=registry)
    return f"http://{addr}:{server.server_port}/metrics"
