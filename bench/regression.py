"""Before and after: the platform's per-step cost and warm-lease latency at two commits, one run.

Each repetition measures the base commit (a `git worktree` of it) and this tree one after
the other (in alternating order), each in a fresh process started in its own tree, so
machine noise hits both alike; medians over repetitions are compared.

- per step: `bench.env_step`'s own measurement (on uvloop, or `--loop asyncio`), every
  hillclimb row of it: our server and client over TCP and over the Unix socket sandboxes use,
  the HTTP session binding, a synchronous environment; 1 session stepping back to back and 16
  concurrently: steps/s.
- warm lease: `bench.sandbox_start.warm_leases` on local sandboxes (`SandboxPool.lease()`
  from a warm pool, health check included, shared sandboxes): seconds per lease, median
  (`--leases 0` skips it).

    python -m bench.regression --base <commit> [--reps 5] [--seconds 1] [--leases 200] [--loop uvloop]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import print_table, summarize, write_result
from envs.serve import LOOP_ENV_VAR

HERE = Path(__file__).resolve().parent.parent

_WARM_LEASE = """
import asyncio, json, statistics, sys, tempfile
from bench.sandbox_start import warm_leases
from providers.base import SandboxSpec
from providers.local import LocalProvider

async def main():
    provider = LocalProvider(root=tempfile.mkdtemp(prefix="hc-reg-"))
    try:
        spec = SandboxSpec(env="toy_terminal", run_id="bench")
        return await warm_leases(provider, spec, int(sys.argv[1]), shared=True)
    finally:
        await provider.close()

print(json.dumps(statistics.median(asyncio.run(main()))))
"""


def _child(tree: Path, args: list[str], env: dict[str, str] | None = None) -> Any:
    done = subprocess.run(
        [sys.executable, *args],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree), **(env or {})},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.splitlines()[-1])


def measure(tree: Path, seconds: float, leases: int, loop: str) -> dict[str, float]:
    steps = _child(tree, ["-m", "bench.env_step", "--child", "--seconds", str(seconds)], {LOOP_ENV_VAR: loop})
    measured = {
        f"{runtime.removeprefix('hillclimb')}: steps/s, {sessions.replace('_', ' ')}": rate
        for runtime, by_sessions in steps.items()
        if runtime.startswith("hillclimb")
        for sessions, rate in by_sessions.items()
    }
    if leases:
        measured["warm lease, ms"] = 1000 * _child(tree, ["-c", _WARM_LEASE, str(leases)])
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the commit to compare against")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0, help="timed window per step measurement")
    parser.add_argument("--leases", type=int, default=200, help="leases per warm-lease measurement (0: none)")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop", help="event loop of the steps")
    args = parser.parse_args()
    base_commit = subprocess.run(
        ["git", "rev-parse", "--short", args.base], cwd=HERE, capture_output=True, text=True, check=True
    ).stdout.strip()
    samples: dict[str, dict[str, list[float]]] = {"base": {}, "head": {}}
    with tempfile.TemporaryDirectory(prefix="hc-base-") as tmp:
        base = Path(tmp) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", str(base), base_commit], cwd=HERE, check=True)
        try:
            for rep in range(args.reps):
                sides = [("base", base), ("head", HERE)]
                for side, tree in sides if rep % 2 == 0 else sides[::-1]:  # neither always goes first
                    for name, value in measure(tree, args.seconds, args.leases, args.loop).items():
                        samples[side].setdefault(name, []).append(value)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=HERE, check=True)
    results = {side: {name: summarize(values) for name, values in by.items()} for side, by in samples.items()}
    rows = []
    for name in [n for n in samples["head"] if n in samples["base"]]:  # rows both commits measure
        before, after = (statistics.median(samples[side][name]) for side in ("base", "head"))
        rows.append([name, f"{before:,.2f}", f"{after:,.2f}", f"{after / before:.3f}"])
    print_table(["measure (median)", f"base {base_commit}", "this tree", "this / base"], rows)
    print(f"\nwrote {write_result('regression', {**vars(args), 'base': base_commit}, results)}")


if __name__ == "__main__":
    main()
