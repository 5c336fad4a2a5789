"""The Kubernetes provider at scale, by simulation: N sandbox lifecycles (create, then destroy)
against the emulated API server (tests/providers/kubernetes/emulator.py: real HTTP, the real
`kubernetes` client), with every request delayed by a fixed latency and admitted as API
Priority and Fairness admits a priority level's requests:

    seats     requests served at once; more wait in a queue of `queue` places
    queue     full: 429 Too Many Requests with `Retry-After: 1`, as APF answers

`concurrency` workers each run lifecycles back to back, retrying a retryable failure as the
sandbox pool does (orchestrator/pool.py: wait `create_retry_delay_s` doubling per failure in a
row up to `create_retry_max_delay_s`, never less than the error's Retry-After; PoolConfig's
defaults). No kubelet runs: pods never start, so `wait_ready` (a pod read per second of
start-up, besides the server's /health) is not in the count; the run's Lease renewals are
per worker, not per sandbox, and are not either. The provider's blocking client calls get
`concurrency` threads (a process left to asyncio's default executor gets min(32, CPUs + 4)).

Reported: API requests per lifecycle by verb and resource, the peak request rate (most requests
in any one second), the 429s and the shortest wait that followed one (Retry-After honoured when
it is at least 1 s), what was left behind (pods, Secrets), and the lifecycles/s sustained.

    python -m bench.k8s_scale [--lifecycles 1000] [--concurrency 64] [--seats 4] [--queue 8] [--latency-ms 20]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attrs
from aiohttp import web
from kmock._internal.apps import Server
from kmock._internal.k8s import KubernetesError

from bench.common import markdown_table, print_table, write_result
from hillclimb.config.sandboxes import PoolConfig
from hillclimb.provider_errors import RetryableProviderError
from providers.contract import SandboxSpec
from providers.kubernetes.egress import default_deny
from providers.kubernetes.provider import KubernetesProvider
from tests.providers.kubernetes.emulator import NAMESPACE, RESOURCES, ClusterEmulator

_VERBS = {"POST": "create", "DELETE": "delete", "PATCH": "patch", "PUT": "update"}


@attrs.frozen
class TooManyRequests(KubernetesError):
    status: int = 429
    reason: str = "TooManyRequests"
    message: str = "too many requests, please try again later"


class ThrottledCluster(ClusterEmulator):
    """The emulated API server behind a latency and one APF priority level's seats and queue."""

    def __init__(self, *, seats: int, queue: int, latency_s: float) -> None:
        super().__init__()
        self.latency_s, self.queue = latency_s, queue
        self._seats = asyncio.Semaphore(seats)
        self._waiting = 0
        self.arrivals: list[float] = []
        self.answered: collections.Counter[tuple[str, str, int]] = collections.Counter()

    async def _handle(self, request: Any) -> Any:
        self.arrivals.append(time.monotonic())
        try:
            if request.resource is None:  # discovery, /version: not what the provider sends
                return await super()._handle(request)
            return await self._admitted(request)
        finally:
            self._forget(request)

    async def _admitted(self, request: Any) -> Any:
        verb = _VERBS.get(str(request.method).upper().rsplit(".", 1)[-1]) or ("get" if request.name else "list")
        key = (verb, request.resource.plural)
        if self._seats.locked() and self._waiting >= self.queue:
            self.answered[(*key, 429)] += 1
            raise TooManyRequests()
        self._waiting += 1
        async with self._seats:
            self._waiting -= 1
            await asyncio.sleep(self.latency_s)
            try:
                response = await super()._handle(request)
            except KubernetesError as e:  # a 404 or 409, answered as the API server would
                self.answered[(*key, e.status)] += 1
                raise
        self.answered[(*key, response.status)] += 1
        return response

    def _forget(self, request: Any) -> None:
        """kmock keeps every request and matches each new one by scanning them all (quadratic
        over a long run); the simulation keeps its own tally instead."""
        for log in (self._requests, *(payload._requests for payload in self._payloads)):
            log[:] = [r for r in log if r is not request]

    async def _render_error(self, exc: Exception) -> web.StreamResponse:
        response = await super()._render_error(exc)
        if isinstance(exc, TooManyRequests):
            response.headers["Retry-After"] = "1"
        return response


class Worker:
    """Lifecycles back to back, retrying as the sandbox pool does."""

    def __init__(self, provider: KubernetesProvider, config: PoolConfig) -> None:
        self.provider, self.config = provider, config
        self.waits_after_429: list[float] = []
        self.retried: collections.Counter[str] = collections.Counter()
        self.failures_in_a_row = 0

    async def _retrying(self, call: Any) -> Any:
        while True:
            try:
                result = await call()
                self.failures_in_a_row = 0
                return result
            except RetryableProviderError as e:
                self.failures_in_a_row += 1
                n, cfg = self.failures_in_a_row, self.config
                delay = max(min(cfg.create_retry_delay_s * 2 ** (n - 1), cfg.create_retry_max_delay_s), e.delay_s)
                if "HTTP 429" in str(e):
                    self.waits_after_429.append(delay)
                self.retried[re.sub(r"hc-[\w-]+|port=\d+", "…", " ".join(str(e).split()[:8]))] += 1
                await asyncio.sleep(delay)

    async def run(self, todo: collections.deque[int]) -> None:
        while todo:
            spec = SandboxSpec(run_id=f"scale-{todo.popleft() % 8}")
            sandbox = await self._retrying(lambda spec=spec: self.provider.create(spec))
            await self._retrying(lambda sandbox=sandbox: self.provider.destroy(sandbox.id))


def peak_per_second(arrivals: list[float]) -> int:
    peak, start = 0, 0
    for end, t in enumerate(arrivals):
        while arrivals[start] < t - 1.0:
            start += 1
        peak = max(peak, end - start + 1)
    return peak


async def simulate(lifecycles: int, concurrency: int, seats: int, queue: int, latency_s: float) -> dict[str, Any]:
    # The provider's blocking client calls run in the loop's default executor: asyncio's default
    # (min(32, CPUs + 4) threads) would bound the run by this machine's cores, not the API server.
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=concurrency))
    api = ThrottledCluster(seats=seats, queue=queue, latency_s=latency_s)
    async with api, Server(api):
        for resource in RESOURCES:
            api.resources[resource] = {}
        provider = KubernetesProvider(namespace=NAMESPACE, api_url=str(api.url).rstrip("/"))
        await asyncio.to_thread(
            provider._networking.create_namespaced_network_policy, NAMESPACE, default_deny(NAMESPACE)
        )
        api.arrivals.clear()
        api.answered.clear()
        workers = [Worker(provider, PoolConfig()) for _ in range(concurrency)]
        todo = collections.deque(range(lifecycles))
        start = time.monotonic()
        await asyncio.gather(*(w.run(todo) for w in workers))
        wall = time.monotonic() - start
        left = {
            kind: sum(1 for key, o in api.objects.items() if key[0].plural == kind and not o.deleted)
            for kind in ("pods", "secrets")
        }
        await provider.close()
    waits = [w for worker in workers for w in worker.waits_after_429]
    by_request: dict[str, int] = collections.Counter()
    for (verb, plural, status), n in api.answered.items():
        by_request[f"{verb} {plural} {status}"] += n
    return {
        "wall_s": wall,
        "lifecycles_per_s": lifecycles / wall,
        "requests": sum(api.answered.values()),
        "requests_per_lifecycle": sum(api.answered.values()) / lifecycles,
        "answered": dict(sorted(by_request.items())),
        "peak_requests_per_s": peak_per_second(api.arrivals),
        "throttled_429": sum(n for (_, _, status), n in api.answered.items() if status == 429),
        "shortest_wait_after_429_s": min(waits) if waits else None,
        "left_behind": left,
    }


def _table(results: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    rows = [
        [
            case,
            f"{r['lifecycles_per_s']:.1f}",
            f"{r['requests_per_lifecycle']:.2f}",
            r["peak_requests_per_s"],
            r["throttled_429"],
            r["shortest_wait_after_429_s"],
            ", ".join(f"{n} {kind}" for kind, n in r["left_behind"].items()),
        ]
        for case, r in results.items()
    ]
    headers = ["case", "lifecycles/s", "requests/lifecycle", "peak req/s", "429s", "min wait after 429 (s)"]
    return [*headers, "left behind"], rows


def tables(record: dict[str, Any]) -> dict[str, str]:
    return {"lifecycles": markdown_table(*_table(record["results"]))}


def headline(record: dict[str, Any]) -> list[tuple[str, str]]:
    free, apf = record["results"]["unthrottled"], record["results"]["apf"]
    left = sum(free["left_behind"].values()) + sum(apf["left_behind"].values())
    return [
        (
            f"Kubernetes provider, {record['config']['lifecycles']:,} sandbox lifecycles against the emulated API "
            "server: requests a lifecycle, unthrottled / behind APF-style 429s",
            f"{free['requests_per_lifecycle']:.2f} / {apf['requests_per_lifecycle']:.2f} ({apf['throttled_429']:,} "
            f"429s, every retry ≥ {apf['shortest_wait_after_429_s']:.1f} s after; {left} objects left behind)",
        )
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lifecycles", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seats", type=int, default=4)
    parser.add_argument("--queue", type=int, default=8)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results/k8s_scale.json")
    args = parser.parse_args()
    config = {k: v for k, v in vars(args).items() if k != "out"}
    results = {
        "unthrottled": asyncio.run(simulate(args.lifecycles, args.concurrency, 10**6, 10**6, args.latency_ms / 1e3)),
        "apf": asyncio.run(simulate(args.lifecycles, args.concurrency, args.seats, args.queue, args.latency_ms / 1e3)),
    }
    print_table(*_table(results))
    for case, r in results.items():
        print(case, r["answered"])
    path = write_result("k8s_scale", config, results, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
