"""Rollout throughput and the platform's own cost per step, with the scripted oracle.

Throughput: episodes/s and environment steps/s at 1, 64 and 512 episodes in flight (each level
`--reps` timed windows, the levels alternating order, the host's load after each), through
the real path — Ray rollout workers, warm local sandbox pools, the OpenEnv wire protocol —
on `toy_terminal`'s train split. Every episode must finish with reward 1: failures are
counted and reported.

Overhead: one episode at a time in-process, its wall time split into the policy's time,
the `env.step` round trips and the rest (leasing, rendering, tokenizing, parsing: the
harness). "Platform per step" is everything but the policy and the environment's own
work: its resets and steps as the sandbox timed them around the environment's methods
(`GET /metrics`), where they run after each message wakes the sandbox. Each repetition
is followed by a bare ping-pong between two processes (`bench.pingpong`): the floor under
any round trip into a sandbox, and a gauge of how busy the host was. The same steps
timed on a warm loop in this process are shown too, and the platform's share against
them: on a VM whose idle vCPUs halt, the environment's code runs slower in its sandbox
than warm. It runs on the event loop rollout workers run on (uvloop: Ray runs async
actors on it when installed), before Ray starts, and reports the median of
`--overhead-reps` repetitions with their range.

    python -m bench.rollout [--seconds 20] [--reps 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
from typing import Any

from bench.common import markdown_table, median_range, print_table, summarize, write_result
from bench.pingpong import round_trip_ms
from envs.authoring.registry import load_suite
from envs.authoring.tasks import action_prompt
from envs.client.handle import EnvHandle
from envs.server.metrics import parse_metrics
from envs.server.serve import run_fast
from hillclimb.config import load_config
from orchestrator.driver import RolloutDriver, connect_ray
from orchestrator.schedule import endless_groups
from trainers.trajectory import DoneReason, TrajectoryGroup


async def throughput(in_flight: int, seconds: float) -> dict[str, Any]:
    group_size = 1 if in_flight == 1 else 8
    config = load_config(
        None,
        [
            "env.name=toy_terminal",
            "policy.type=scripted",
            f"rollout.group_size={group_size}",
            f"rollout.concurrency={in_flight}",
            "ray.num_workers=2",
            "pool.sessions_per_sandbox=64",
            f"pool.max_total={max(2, in_flight // 32)}",
        ],
    )
    groups = endless_groups(load_suite("toy_terminal"), "train", run_seed=0, group_size=group_size)
    done: list[TrajectoryGroup] = []
    driver = RolloutDriver(config)
    await driver.start()
    try:
        # Warm up: sandboxes started, every worker built.
        await driver.run_groups([next(groups) for _ in range(max(2, in_flight // group_size))], lambda g: None)
        start = time.perf_counter()
        runner = asyncio.ensure_future(driver.run_groups(groups, done.append))
        await asyncio.sleep(seconds)
        runner.cancel()
        elapsed = time.perf_counter() - start
        await asyncio.gather(runner, return_exceptions=True)
    finally:
        await driver.close()
    episodes = [t for g in done for t in g.trajectories]
    failed = sum(t.done_reason is not DoneReason.FINISHED or t.reward != 1.0 for t in episodes)
    return {
        "in_flight": in_flight,
        "episodes_per_s": len(episodes) / elapsed,
        "steps_per_s": sum(t.turns for t in episodes) / elapsed,
        "episodes": len(episodes),
        "failed": failed,
    }


def overhead(episodes: int, reps: int) -> dict[str, Any]:
    """Each per-step figure's statistics over `reps`, each rep followed by the bare round trip."""
    runs = []
    for _ in range(reps):
        run = run_fast(_overhead_once(episodes))
        run["per_step_ms"]["bare two-process round trip (the floor)"] = round_trip_ms(2000)
        runs.append(run)
    return {
        "episodes": episodes,
        "reps": reps,
        "steps": runs[0]["steps"],
        "per_step_ms": {key: summarize([r["per_step_ms"][key] for r in runs]) for key in runs[0]["per_step_ms"]},
    }


async def throughputs(levels: list[int], seconds: float, reps: int) -> list[dict[str, Any]]:
    """Each level `reps` times, the levels' order reversed every other repetition; per level the
    statistics of episodes/s and steps/s, the episodes and failures summed, the host's 1-minute
    load after each window."""
    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in levels}
    for rep in range(reps):
        for n in levels if rep % 2 == 0 else levels[::-1]:
            runs[n].append(await throughput(n, seconds) | {"load_1min": os.getloadavg()[0]})
    return [
        {
            "in_flight": n,
            "episodes_per_s": summarize([r["episodes_per_s"] for r in windows]),
            "steps_per_s": summarize([r["steps_per_s"] for r in windows]),
            "episodes": sum(r["episodes"] for r in windows),
            "failed": sum(r["failed"] for r in windows),
            "load_1min": [r["load_1min"] for r in windows],
        }
        for n, windows in runs.items()
    ]


async def _overhead_once(episodes: int) -> dict[str, Any]:
    """Per-step split of one-at-a-time episodes: policy, env round trip, harness."""
    from envs.builtin.toy_terminal import ToyTerminalAction, ToyTerminalEnv
    from hillclimb.config.rollout import EpisodeConfig
    from hillclimb.config.sandboxes import PoolConfig
    from orchestrator.pool import SandboxPool
    from orchestrator.render import PlainTextRenderer
    from orchestrator.rollout import EpisodeRunner, EpisodeSpec, EpisodeTiming
    from providers.contract import SandboxSpec
    from providers.local import LocalProvider
    from trainers.policy.scripted import ScriptedPolicy
    from trainers.tokenizer import ByteTokenizer

    root = tempfile.mkdtemp(prefix="hc-bench-")
    provider = LocalProvider(root=root)
    sandbox = SandboxSpec(env="toy_terminal", run_id="bench")
    pool = SandboxPool(provider, sandbox, PoolConfig(min_ready=1, max_total=1), shared=True)  # one sandbox to ask
    tokenizer = ByteTokenizer()
    suite = load_suite("toy_terminal")
    runner = EpisodeRunner(
        pool,
        ScriptedPolicy(tokenizer),
        PlainTextRenderer(tokenizer, tokenizer.bos_token_id, action_prompt=action_prompt(suite)),
        suite,
        EpisodeConfig(),
    )
    tasks = suite.tasks("train")
    timing = EpisodeTiming()
    try:
        await pool.start()
        await pool.wait_warm(60)
        async with await pool.lease(60) as lease:
            handle = lease.handle
        before = await _env_metrics(handle)
        for i in range(episodes):
            task = tasks[i % len(tasks)]
            spec = EpisodeSpec(
                run_id="bench", env="toy_terminal", split="train", task=task, group_id=f"g{i}", sample_index=0, seed=i
            )
            await runner.run(spec, timing)
        after = await _env_metrics(handle)
    finally:
        await pool.close()
        await provider.close()
        shutil.rmtree(root, ignore_errors=True)
    ran = {key: after[key] - before[key] for key in after}
    if ran["calls_total{reset}"] != episodes or ran["calls_total{step}"] != timing.steps:
        raise RuntimeError(f"the sandbox ran {ran}, not the {episodes} episodes and {timing.steps} steps sent")
    in_sandbox = ran["call_seconds_total{reset}"] + ran["call_seconds_total{step}"]
    # The same steps on a warm loop in this process (no sandbox, no socket).
    env = ToyTerminalEnv()
    own: list[float] = []
    for i in range(episodes):
        task = tasks[i % len(tasks)]
        await env.reset_async(task_id=task.id)
        for text in task.oracle:
            start = time.perf_counter()
            await env.step_async(ToyTerminalAction(**suite.parse_action(text)))
            own.append(time.perf_counter() - start)
    steps = timing.steps
    harness = timing.total_s - timing.policy_s - timing.env_s
    beyond_policy = 1000 * (timing.total_s - timing.policy_s) / steps
    warm_step = 1000 * summarize(own)["mean"]
    return {
        "episodes": episodes,
        "steps": steps,
        "per_step_ms": {
            "total": 1000 * timing.total_s / steps,
            "policy (scripted)": 1000 * timing.policy_s / steps,
            "env.step round trip": 1000 * timing.env_s / steps,
            "harness (lease, reset, render, tokenize, parse)": 1000 * harness / steps,
            "env's own reset + step, in the sandbox": 1000 * in_sandbox / steps,
            "env's own step, in-process (warm)": warm_step,
            PLATFORM: beyond_policy - 1000 * in_sandbox / steps,
            "platform, against the warm in-process step": beyond_policy - warm_step,
        },
    }


async def _env_metrics(handle: EnvHandle) -> dict[str, float]:
    status, text = await handle.request("/metrics")
    if status != 200:
        raise RuntimeError(f"GET /metrics on the sandbox answered {status}: {text}")
    return parse_metrics(text)


PLATFORM = "platform (all but policy and env's own work)"


def _throughput_table(results: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    rows = [
        [
            r["in_flight"],
            median_range(r["episodes_per_s"]),
            median_range(r["steps_per_s"]),
            f"{r['episodes']:,}",
            r["failed"],
            " / ".join(f"{x:.1f}" for x in r["load_1min"]),
        ]
        for r in results["throughput"]
    ]
    headers = ["episodes in flight", "episodes/s, median (range)", "env steps/s", "episodes", "failed"]
    return [*headers, "host load (1 min) per window"], rows


def _split_table(results: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    split = results["overhead"]
    heading = f"per step (one episode at a time; median of {split['reps']} repetitions of {split['episodes']} episodes)"
    return [heading, "ms, median (range)"], [[k, median_range(v, "{:.3f}")] for k, v in split["per_step_ms"].items()]


def tables(record: dict[str, Any]) -> dict[str, str]:
    results = record["results"]
    return {"throughput": markdown_table(*_throughput_table(results)), "split": markdown_table(*_split_table(results))}


def headline(record: dict[str, Any]) -> list[tuple[str, str]]:
    widest = max(record["results"]["throughput"], key=lambda r: r["in_flight"])
    per_step = record["results"]["overhead"]["per_step_ms"]
    return [
        (
            f"rollouts of the scripted oracle, {widest['in_flight']} episodes in flight",
            f"{median_range(widest['episodes_per_s'])} episodes/s, {widest['failed']} failures",
        ),
        (
            "platform cost per env step (all but the policy and the environment's own work)",
            f"{median_range(per_step[PLATFORM], '{:.3f}')} ms",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window per concurrency level")
    parser.add_argument("--overhead-episodes", type=int, default=300)
    parser.add_argument("--overhead-reps", type=int, default=9)
    parser.add_argument("--reps", type=int, default=3, help="timed windows per level, levels alternating")
    args = parser.parse_args()
    split = overhead(args.overhead_episodes, args.overhead_reps)
    connect_ray(None)
    levels = asyncio.run(throughputs([1, 64, 512], args.seconds, args.reps))
    results = {"throughput": levels, "overhead": split}
    for headers, rows in (_throughput_table(results), _split_table(results)):
        print_table(headers, rows)
        print()
    path = write_result(
        "rollout",
        {
            "seconds": args.seconds,
            "reps": args.reps,
            "overhead_episodes": args.overhead_episodes,
            "overhead_reps": args.overhead_reps,
        },
        results,
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
