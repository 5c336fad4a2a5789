"""Sandbox create-to-ready time: from `create()` until the server answers `/health`.

The local provider is measured cold (the first sandbox also starts the zygote) and then
over N sandboxes created one after another, each destroyed before the next.

    python -m bench.sandbox_start [--count 50]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from typing import Any

from bench.common import percentile, print_table, summarize, write_result
from providers.base import SandboxSpec
from providers.local import LocalProvider


async def measure_local(count: int) -> dict[str, Any]:
    root = tempfile.mkdtemp(prefix="hc-bench-")
    provider = LocalProvider(root=root)
    spec = SandboxSpec(env="toy_terminal", run_id="bench")
    samples: list[float] = []
    try:
        for _ in range(count + 1):
            start = time.perf_counter()
            sandbox = await provider.create(spec)
            await provider.wait_ready(sandbox)
            samples.append(time.perf_counter() - start)
            await provider.destroy(sandbox.id)
    finally:
        await provider.close()
        shutil.rmtree(root, ignore_errors=True)
    first, rest = samples[0], samples[1:]
    return {"first_s": first, "p50_s": percentile(rest, 50), "p99_s": percentile(rest, 99), "all": summarize(rest), "describe": provider.describe()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50)
    args = parser.parse_args()
    results = {"local": asyncio.run(measure_local(args.count))}
    rows = [
        [name, f"{r['first_s'] * 1000:.0f}", f"{r['p50_s'] * 1000:.1f}", f"{r['p99_s'] * 1000:.1f}", args.count]
        for name, r in results.items()
    ]
    print_table(["provider", "first (ms, incl. zygote)", "p50 (ms)", "p99 (ms)", "n"], rows)
    print(f"\nwrote {write_result('sandbox_start', {'count': args.count}, results)}")


if __name__ == "__main__":
    main()
