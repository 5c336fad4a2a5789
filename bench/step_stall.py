"""What a blocking synchronous step costs the other sessions of the same server.

One session steps `NapEnv` with a 20 ms blocking step over and over (a subprocess, a slow
verifier) while another steps it with no nap and times each reply; the second's latency is
compared with the same measurement while nobody naps. Three cases, each on a fresh server:

- slow from the start: every blocking step runs on its session's thread (it never proves short);
- fast, then slow: the class first proves itself (64 short calls, so its calls run inline), then
  one session starts blocking: the first blocking call runs inline and stalls the loop once, and
  sends the class back to the thread;
- inline calls off (`inline_sync_calls: false`): the thread for every call, the old behaviour.

    python -m bench.step_stall [--reps 5] [--seconds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from bench.common import markdown_table, median_range, percentile, print_table, summarize, write_result
from bench.trivial_env import NapEnv
from envs.client.ws_client import EnvClient
from envs.server.env_server import EnvServer, ServerConfig
from envs.server.runtime import EnvRuntime

NAP_MS = 20.0
CASES = ("slow from the start", "fast, then slow", "inline calls off")


async def _latencies(seconds: float, case: str) -> dict[str, float]:
    server = EnvServer(EnvRuntime(NapEnv), ServerConfig(inline_sync_calls=case != "inline calls off"), token=None)
    port = await server.start_tcp()
    url = f"ws://127.0.0.1:{port}/ws"
    try:
        async with EnvClient(url) as napper, EnvClient(url) as timed:
            await napper.reset()
            await timed.reset()
            if case == "fast, then slow":
                for _ in range(100):
                    await timed.step({})
            stop = time.perf_counter() + seconds

            async def nap_forever() -> None:
                while time.perf_counter() < stop:
                    await napper.step({"nap_ms": NAP_MS})

            napping = asyncio.ensure_future(nap_forever())
            samples = []
            while not napping.done():
                start = time.perf_counter()
                await timed.step({})
                samples.append(time.perf_counter() - start)
            await napping
    finally:
        await server.close()
    return {"p50_ms": statistics.median(samples) * 1e3, "p99_ms": percentile(samples, 99) * 1e3,
            "max_ms": max(samples) * 1e3}  # fmt: skip


def _table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    rows = [[case, *(median_range(stats[key], "{:.2f}") for key in stats)] for case, stats in results.items()]
    heading = f"another session's reply while one naps {NAP_MS:g} ms a step"
    return [heading, "p50 ms, median (range)", "p99 ms", "max ms"], rows


def tables(record: dict[str, Any]) -> dict[str, str]:
    return {"stall": markdown_table(*_table(record["results"]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    samples: dict[str, list[dict[str, float]]] = {case: [] for case in CASES}
    for rep in range(args.reps):
        for case in CASES[rep % 3 :] + CASES[: rep % 3]:  # rotate which goes first
            samples[case].append(asyncio.run(_latencies(args.seconds, case)))
    keys = ("p50_ms", "p99_ms", "max_ms")
    results = {case: {key: summarize([s[key] for s in samples[case]]) for key in keys} for case in CASES}
    print_table(*_table(results))
    path = write_result("step_stall", {"reps": args.reps, "seconds": args.seconds, "nap_ms": NAP_MS}, results)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
