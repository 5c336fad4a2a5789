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
- cold start: `bench.sandbox_start.cold_starts`, create until `/health` answers, median of
  `--cold` local sandboxes (the zygote's start excluded) and, given `--docker-images BASE HEAD`
  (an image built from each commit: each side's server is its own code), of Docker sandboxes.
- terminal step: the round trip of a `true` command in a local `terminal` sandbox, median of
  `--steps`: what the warden adds around each of the agent's commands.
- rollout: `bench.rollout`'s two figures, the platform's cost per step of one episode at a time
  over `--rollout-episodes` scripted episodes, and episodes/s at 64 in flight through Ray
  rollout workers over `--rollout-seconds` (`--rollout-episodes 0` skips both).

The snippets below take the project's names through each tree's own bench modules, which
import them from wherever that commit keeps them, so one snippet runs at both commits.

    python -m bench.regression --base <commit> [--reps 5] [--seconds 1] [--leases 200] [--cold 20]
        [--steps 200] [--rollout-episodes 200] [--rollout-seconds 10] [--docker-images BASE_TAG HEAD_TAG]
        [--loop uvloop] [--name regression]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.common import base_tree, interleaved, markdown_table, median_range, print_table, summarize, write_result
from envs.server.serve import LOOP_ENV_VAR

HERE = Path(__file__).resolve().parent.parent

_WARM_LEASE = """
import asyncio, json, statistics, sys, tempfile
from bench.sandbox_start import SandboxSpec, warm_leases
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

_COLD_START = """
import asyncio, json, statistics, sys, tempfile
from bench.sandbox_start import SandboxSpec, cold_starts

async def main(kind, count, image):
    root = tempfile.mkdtemp(prefix="hc-reg-")
    if kind == "docker":
        from providers.docker import DockerProvider
        provider = DockerProvider(root=root, image=image, check_image=False)
    else:
        from providers.local import LocalProvider
        provider = LocalProvider(root=root)
    try:
        samples = await cold_starts(provider, SandboxSpec(env="toy_terminal", run_id="bench"), count + 1)
        return statistics.median(samples[1:])  # the first local one also starts the zygote
    finally:
        await provider.close()

print(json.dumps(asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))))
"""

_TERMINAL_STEP = """
import asyncio, json, statistics, sys, tempfile, time
from bench.sandbox_start import SandboxSpec
from providers.local import LocalProvider

async def main(count):
    provider = LocalProvider(root=tempfile.mkdtemp(prefix="hc-reg-"))
    try:
        sandbox = await provider.create(SandboxSpec(env="terminal", run_id="bench"))
        await provider.wait_ready(sandbox)
        async with sandbox.handle.client() as env:
            samples = []
            for n in range(count + 10):  # the first ten warm up
                if n % 25 == 0:  # an episode has 30 steps
                    await env.reset(task_id="create-hello")
                start = time.perf_counter()
                await env.step({"command": "true"})
                samples.append(time.perf_counter() - start)
        return statistics.median(samples[10:])
    finally:
        await provider.close()

print(json.dumps(asyncio.run(main(int(sys.argv[1])))))
"""

_ROLLOUT = """
import asyncio, json, sys
from bench.rollout import connect_ray, overhead, throughput

per_step = overhead(int(sys.argv[1]), 1)["per_step_ms"]
connect_ray(None)
in_flight = asyncio.run(throughput(64, float(sys.argv[2])))
if in_flight["failed"]:
    raise SystemExit(f"{in_flight['failed']} episodes failed")
print(json.dumps([per_step["platform (all but policy and env's own work)"], in_flight["episodes_per_s"]]))
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


def measure(tree: Path, args: argparse.Namespace, image: str | None) -> dict[str, float]:
    seconds, leases = args.seconds, args.leases
    steps = _child(tree, ["-m", "bench.env_step", "--child", "--seconds", str(seconds)], {LOOP_ENV_VAR: args.loop})
    measured = {
        f"{runtime.removeprefix('hillclimb')}: steps/s, {sessions.replace('_', ' ')}": rate
        for runtime, by_sessions in steps.items()
        if runtime.startswith("hillclimb")
        for sessions, rate in by_sessions.items()
    }
    if leases:
        measured["warm lease, ms"] = 1000 * _child(tree, ["-c", _WARM_LEASE, str(leases)])
    if args.cold:
        measured["cold start, local, ms"] = 1000 * _child(tree, ["-c", _COLD_START, "local", str(args.cold), ""])
    if args.cold and image is not None:
        measured["cold start, docker, ms"] = 1000 * _child(tree, ["-c", _COLD_START, "docker", str(args.cold), image])
    if args.steps:
        measured["terminal step, local, ms"] = 1000 * _child(tree, ["-c", _TERMINAL_STEP, str(args.steps)])
    if args.rollout_episodes:
        platform_ms, episodes_per_s = _child(
            tree, ["-c", _ROLLOUT, str(args.rollout_episodes), str(args.rollout_seconds)]
        )
        measured["rollout: platform per step, ms"] = platform_ms
        measured["rollout: episodes/s, 64 in flight"] = episodes_per_s
    return measured


def _table(results: dict[str, Any], base_commit: str) -> tuple[list[str], list[list[str]]]:
    rows = []
    for name in [n for n in results["head"] if n in results["base"]]:  # rows both commits measure
        before, after = results["base"][name], results["head"][name]
        ratio = f"{after['median'] / before['median']:.2f}"
        label = name.lstrip(" ,")  # the step rows are named after bench.env_step's contenders less "hillclimb"
        rows.append([label, median_range(before, "{:,.2f}"), median_range(after, "{:,.2f}"), ratio])
    return ["measure, median (range)", f"base {base_commit}", "this tree", "this / base"], rows


def tables(record: dict[str, Any]) -> dict[str, str]:
    return {"sides": markdown_table(*_table(record["results"], record["config"]["base"]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the commit to compare against")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0, help="timed window per step measurement")
    parser.add_argument("--leases", type=int, default=200, help="leases per warm-lease measurement (0: none)")
    parser.add_argument("--cold", type=int, default=20, help="cold starts per measurement (0: none)")
    parser.add_argument("--steps", type=int, default=200, help="terminal steps per measurement (0: none)")
    parser.add_argument("--rollout-episodes", type=int, default=200, help="episodes of the per-step cost (0: none)")
    parser.add_argument("--rollout-seconds", type=float, default=10.0, help="timed window at 64 in flight")
    parser.add_argument(
        "--docker-images", nargs=2, metavar=("BASE", "HEAD"), help="sandbox images built from each commit"
    )
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop", help="event loop of the steps")
    parser.add_argument("--name", default="regression", help="the result file: bench/results/NAME.json")
    args = parser.parse_args()
    images = dict(zip(("base", "head"), args.docker_images or (None, None), strict=True))
    samples: dict[str, dict[str, list[float]]] = {"base": {}, "head": {}}
    with base_tree(args.base) as (base_commit, base):
        for rep in range(args.reps):
            for side, tree in interleaved(rep, base, HERE):
                for name, value in measure(tree, args, images[side]).items():
                    samples[side].setdefault(name, []).append(value)
    results = {side: {name: summarize(values) for name, values in by.items()} for side, by in samples.items()}
    print_table(*_table(results, base_commit))
    path = write_result(args.name, {**vars(args), "base": base_commit}, results)
    print(f"\nhost load (1, 5, 15 min): {os.getloadavg()}; wrote {path}")


if __name__ == "__main__":
    main()
