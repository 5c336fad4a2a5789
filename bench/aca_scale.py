"""The ACA provider at scale, by simulation: N session lifecycles (create: the session allocated by
its claim; wait_ready: /health through the pool; destroy: stopSession) against the emulated
session pool (tests/providers/aca/emulator.py: TLS, the platform token checked, each session a
local sandbox running the pool's command), every request delayed by a fixed latency, and past
`limit` requests in flight answered 429 with `Retry-After: 1` (a rate limit in front of the pool;
ACA's own limits are not modelled). `concurrency` workers retry a retryable failure as the
sandbox pool does (orchestrator/pool.py's backoff, PoolConfig's defaults, never shorter than the
Retry-After); the pool's maxConcurrentSessions is `concurrency`. Needs root (local sandboxes).

Reported: requests per lifecycle by operation and status, the peak request rate, the 429s and the
shortest wait after one, the sessions left, and lifecycles/s (bounded here by this machine
starting local sandboxes, not by ACA: read the request counts, not the rate).

    python -m bench.aca_scale [--lifecycles 1000] [--concurrency 16] [--limit 8] [--latency-ms 20]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.common import markdown_table, print_table, write_result
from bench.k8s_scale import Worker, peak_per_second
from envs.wire import http
from hillclimb.config.sandboxes import PoolConfig
from providers.aca.provider import AcaProvider
from providers.contract import SandboxSpec
from providers.local import LocalProvider
from tests.private_ca import PrivateCA
from tests.providers.aca.emulator import SessionPoolEmulator, hand_made_pool
from tests.providers.aca.fake_azure import FakeCredential


class ThrottledPool(SessionPoolEmulator):
    """The emulated pool behind a latency and a cap on requests in flight."""

    def __init__(self, *args: Any, limit: int, latency_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limit, self.latency_s, self.in_flight = limit, latency_s, 0
        self.arrivals: list[float] = []
        self.answered: collections.Counter[str] = collections.Counter()

    async def _answer(self, request: http.Request) -> bytes:
        self.arrivals.append(time.monotonic())
        operation = urlsplit(request.target).path.rsplit("/", 1)[-1]
        if self.in_flight >= self.limit:
            self.answered[f"{operation} 429"] += 1
            return http.render_response(429, b"too many requests", {"Retry-After": "1"})
        self.in_flight += 1
        try:
            await asyncio.sleep(self.latency_s)
            response = await super()._answer(request)
        finally:
            self.in_flight -= 1
        self.answered[f"{operation} {response.split(b' ', 2)[1].decode()}"] += 1
        return response


class SessionWorker(Worker):
    async def run(self, todo: collections.deque[int]) -> None:
        while todo:
            spec = SandboxSpec(env="toy_terminal", run_id=f"scale-{todo.popleft() % 8}")
            sandbox = await self._retrying(lambda spec=spec: self.provider.create(spec))
            await self.provider.wait_ready(sandbox)
            await self._retrying(lambda sandbox=sandbox: self.provider.destroy(sandbox.id))


async def simulate(lifecycles: int, concurrency: int, limit: int, latency_s: float) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="hc-aca-scale-", dir="/tmp"))
    ca = PrivateCA(root)
    sandboxes = LocalProvider(root=root / "sessions")
    pools = {"scale": hand_made_pool("toy_terminal")}
    pool = ThrottledPool(
        sandboxes,
        pools.get,
        tls=ca.server_context(),
        max_concurrent_sessions=concurrency,
        limit=limit,
        latency_s=latency_s,
    )
    await pool.start()
    aca = AcaProvider(pool_endpoint=pool.pool_endpoint("scale"), ca_file=str(ca.cert_path), credential=FakeCredential())
    try:
        workers = [SessionWorker(aca, PoolConfig()) for _ in range(concurrency)]
        todo = collections.deque(range(lifecycles))
        start = time.monotonic()
        await asyncio.gather(*(w.run(todo) for w in workers))
        wall = time.monotonic() - start
        left = len(pool.sessions)
    finally:
        await aca.close()
        await pool.close()
        await sandboxes.close()
        shutil.rmtree(root, ignore_errors=True)
    waits = [w for worker in workers for w in worker.waits_after_429]
    retried = sum((worker.retried for worker in workers), collections.Counter())
    return {
        "wall_s": wall,
        "lifecycles_per_s": lifecycles / wall,
        "requests": sum(pool.answered.values()),
        "requests_per_lifecycle": sum(pool.answered.values()) / lifecycles,
        "answered": dict(sorted(pool.answered.items())),
        "peak_requests_per_s": peak_per_second(pool.arrivals),
        "throttled_429": sum(n for key, n in pool.answered.items() if key.endswith(" 429")),
        "shortest_wait_after_429_s": min(waits) if waits else None,
        "retried": dict(retried.most_common(10)),
        "sessions_left": left,
        "sessions_allocated": pool.allocations,
    }


def _table(results: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    r = results["throttled"]
    row = [
        f"{r['lifecycles_per_s']:.1f}",
        f"{r['requests_per_lifecycle']:.2f}",
        r["peak_requests_per_s"],
        r["throttled_429"],
        r["shortest_wait_after_429_s"],
        r["sessions_left"],
    ]
    headers = ["lifecycles/s", "requests/lifecycle", "peak req/s", "429s", "min wait after 429 (s)", "sessions left"]
    return headers, [row]


def tables(record: dict[str, Any]) -> dict[str, str]:
    return {"lifecycles": markdown_table(*_table(record["results"]))}


def headline(record: dict[str, Any]) -> list[tuple[str, str]]:
    r = record["results"]["throttled"]
    config = record["config"]
    return [
        (
            f"ACA provider, {config['lifecycles']:,} session lifecycles against the emulated pool "
            f"(cap {config['limit']} in flight): requests a lifecycle; sessions a client timeout left allocated",
            f"{r['requests_per_lifecycle']:.2f}; {r['sessions_left']}",
        )
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lifecycles", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--limit", type=int, default=8)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results/aca_scale.json")
    args = parser.parse_args()
    config = {k: v for k, v in vars(args).items() if k != "out"}
    result = asyncio.run(simulate(args.lifecycles, args.concurrency, args.limit, args.latency_ms / 1e3))
    print_table(*_table({"throttled": result}))
    print(result["answered"])
    print(result["retried"])
    path = write_result("aca_scale", config, {"throttled": result}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
