"""Before and after: the Ray driver's load per training step, at 1 and at 8 rollout workers.

Each repetition runs a short `hillclimb train` (configs/echo_toy.yaml, a few steps) at the
base commit (a `git worktree` of it) and at this tree, in alternating order, each in a fresh
process started in its own tree with a local Ray of its own. That process is the driver; it
records, at the end of every RL step:

- its CPU time (`time.process_time`: every thread, Ray's core worker included), per step
  over the steps after the first (steady state);
- its resident memory: the median at the steps' ends (steady) and its high-water mark (peak);
- what Ray serialized or deserialized in it per step (`bench.driver_traffic`: Ray's bytes), and
  the trajectory data among it (token lists, weighed by their pickled size, so the two figures
  are not parts of one sum); the oracle's and the evaluations' episodes, which come back to the
  driver to be scored, are left out.

    python -m bench.driver_load --base 699ae5f [--reps 2] [--steps 5] [--workers 1 8]
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

from bench.common import base_tree, interleaved, markdown_table, median_range, print_table, summarize, write_result

HERE = Path(__file__).resolve().parent.parent

_CHILD = """
import asyncio, importlib.util, json, sys, time
from pathlib import Path

here, run_dir, overrides = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
spec = importlib.util.spec_from_file_location("driver_traffic", here / "bench" / "driver_traffic.py")
driver_traffic = importlib.util.module_from_spec(spec)
spec.loader.exec_module(driver_traffic)

try:
    from hillclimb.config import load_config
except ImportError:  # a commit from before the run-config schema moved to the ground floor
    from orchestrator.config import load_config
from orchestrator.train import Trainer

def status_kib(field):
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(field + ":"))
    return int(line.split()[1])

config = load_config("configs/echo_toy.yaml", [*overrides, f"run.dir={run_dir}"])
trainer = Trainer(config, run_dir)
steps = []
with driver_traffic.DriverTraffic() as traffic:
    def paused(method):
        async def uncounted(*args, **kwargs):
            with traffic.paused():
                return await method(*args, **kwargs)
        return uncounted

    def recorded(method):
        async def step(*args, **kwargs):
            values = await method(*args, **kwargs)
            steps.append({
                "cpu_s": time.process_time(), "rss_kib": status_kib("VmRSS"), "hwm_kib": status_kib("VmHWM"),
                "bytes": traffic.total_bytes, "trajectory_bytes": traffic.trajectory_bytes,
            })
            return values
        return step

    trainer._oracle_transcripts = paused(trainer._oracle_transcripts)
    trainer._heldout_success = paused(trainer._heldout_success)
    trainer._step = recorded(trainer._step)
    asyncio.run(trainer.run())
print(json.dumps(steps))
"""


def _run(tree: Path, workers: int, steps: int) -> dict[str, float]:
    overrides = [
        f"train.steps={steps}",
        "train.warmup_steps=1",
        "train.eval_every=1000",
        "train.eval_tasks=2",
        "train.checkpoint_every=1000",
        "train.time_budget_s=null",
        f"ray.num_workers={workers}",
    ]
    with tempfile.TemporaryDirectory(prefix="hc-driver-load-") as run_dir:
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, str(HERE), run_dir, *overrides],
            cwd=tree,
            env={**os.environ, "PYTHONPATH": str(tree)},
            capture_output=True,
            text=True,
        )
    if done.returncode:
        raise RuntimeError(f"the run in {tree} failed:\n{done.stderr[-3000:]}")
    records = json.loads(done.stdout.splitlines()[-1])
    first, last = records[0], records[-1]
    n = len(records) - 1  # the steps after the first: its end is where the steady state's clock starts
    return {
        "cpu_s_per_step": (last["cpu_s"] - first["cpu_s"]) / n,
        "rss_mib_steady": statistics.median(r["rss_kib"] for r in records) / 1024,
        "rss_mib_peak": last["hwm_kib"] / 1024,
        "kib_through_driver_per_step": (last["bytes"] - first["bytes"]) / n / 1024,
        "trajectory_kib_through_driver_per_step": (last["trajectory_bytes"] - first["trajectory_bytes"]) / n / 1024,
    }


def _table(results: dict[str, Any], base_commit: str) -> tuple[list[str], list[list[str]]]:
    rows = []
    for case, measures in results.items():
        side, workers = case.split("/")
        if side == "head":
            for name, stats in measures.items():
                before = median_range(results[f"base/{workers}"][name], "{:,.3f}")
                rows.append([f"{workers} worker(s): {name}", before, median_range(stats, "{:,.3f}")])
    return ["measure, median (range)", f"base {base_commit}", "this tree"], rows


def tables(record: dict[str, Any]) -> dict[str, str]:
    return {"per_step": markdown_table(*_table(record["results"], record["config"]["base"]))}


def headline(record: dict[str, Any]) -> list[tuple[str, str]]:
    results = record["results"]
    workers = sorted({case.split("/")[1] for case in results}, key=int)
    name = "trajectory_kib_through_driver_per_step"
    figure = " and ".join(
        " / ".join(f"{results[f'{side}/{w}'][name]['median']:,.0f}" for side in ("base", "head")) + " KiB"
        for w in workers
    )
    return [
        (
            f"trajectory data through the Ray driver per RL step, {' and '.join(workers)} rollout workers: "
            f"before ({record['config']['base']}) / after the buffer made the batches",
            figure,
        )
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the commit to compare against")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="RL steps per run (at least 2)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 8], help="rollout workers (ray.num_workers)")
    args = parser.parse_args()
    samples: dict[str, dict[str, list[float]]] = {}
    with base_tree(args.base) as (base_commit, base):
        for rep in range(args.reps):
            for workers in args.workers:
                for side, tree in interleaved(rep, base, HERE):
                    for name, value in _run(tree, workers, args.steps).items():
                        samples.setdefault(f"{side}/{workers}", {}).setdefault(name, []).append(value)
    results = {case: {name: summarize(values) for name, values in by.items()} for case, by in samples.items()}
    print_table(*_table(results, base_commit))
    path = write_result("driver_load", {**vars(args), "base": base_commit}, results)
    print(f"\nhost load (1, 5, 15 min): {os.getloadavg()}; wrote {path}")


if __name__ == "__main__":
    main()
