"""The main job's fixed costs — its wall time outside learning — at two commits, interleaved.

    python -m bench.main_job --base main [--reps 2]   ─► bench/results/main_job_costs.json

Each repetition runs `hillclimb train configs/echo_toy.yaml` once at `--base` (a detached
worktree) and once at this checkout, in alternating order, each a whole process as a user runs
it. From each run's own files, the same way at both commits:

- `process_s`: the process's wall time, start to exit (imports, Ray's start and shutdown, plots);
- `bc_s`, `bc_step_s`: the behaviour-cloning warm-up (metrics.jsonl's clock, from the initial
  evaluation's record to the last warm-up step's) and its time a step;
- `rl_s`, `rl_step_s`: the RL steps' own time (each step's `time/rollouts_s` + `time/train_s` +
  `time/publish_s`) and its median a step;
- `fixed_s` = `process_s` − `bc_s` − `rl_s`: everything that is not a learning step — Ray, the
  oracle's episodes, the model build, the pools, the evaluations, publishing the first weights,
  checkpoints, shutdown.

Where a commit records summary.json's `timings`, each phase's seconds are reported beside these
(`outside_run_s`: the process's time outside `Trainer.run`). The host's 1-minute load is sampled
through each run: other work on a 2-core host moves every figure, so it stands beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import base_tree, interleaved, median_range, print_table, summarize, write_result

HERE = Path(__file__).resolve().parent.parent
CONFIG = "configs/echo_toy.yaml"
LOAD_SAMPLE_S = 5.0
"""How often the host's load is read during a run."""
FIGURES = {
    "process_s": "whole process, s",
    "fixed_s": "fixed costs outside learning, s",
    "bc_step_s": "s per BC step",
    "rl_step_s": "s per RL step (median)",
    "bc_s": "BC warm-up, s",
    "rl_s": "RL steps, s",
}
"""The figures every run yields, whatever its commit records: (key, what it is)."""


class _LoadSampler:
    """The host's 1-minute load average, read every `LOAD_SAMPLE_S` while a run lasts."""

    def __init__(self) -> None:
        self.samples = [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(LOAD_SAMPLE_S):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> _LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])


def run_figures(records: list[dict[str, Any]], summary: dict[str, Any], process_s: float) -> dict[str, Any]:
    """A finished run's figures from its metrics.jsonl records and summary.json (see the module doc)."""
    initial = next(r for r in records if r["kind"] == "eval_initial")
    warmup = [r for r in records if r["kind"] == "warmup"]
    steps = [r for r in records if r["kind"] == "train"]
    step_s = [r["time/rollouts_s"] + r["time/train_s"] + r["time/publish_s"] for r in steps]
    bc_s = warmup[-1]["elapsed_s"] - initial["elapsed_s"] if warmup else 0.0
    timings = summary.get("timings")
    return {
        "process_s": process_s,
        "bc_s": bc_s,
        "bc_step_s": bc_s / len(warmup) if warmup else 0.0,
        "rl_s": sum(step_s),
        "rl_step_s": statistics.median(step_s) if step_s else 0.0,
        "fixed_s": process_s - bc_s - sum(step_s),
        "rl_steps": len(steps),
        "bc_steps": len(warmup),
        "heldout_env_ce": summary["heldout_env_ce"],
        "heldout_pass1": summary["heldout_pass1"],
        "timings": None if timings is None else timings | {"outside_run_s": process_s - timings["total_s"]},
    }


def run_job(tree: Path, sets: list[str]) -> dict[str, Any]:
    """The main job at `tree`, as a user runs it, and its figures."""
    with tempfile.TemporaryDirectory(prefix="hc-main-job-") as tmp:
        overrides = [arg for item in (*sets, f"run.dir={tmp}") for arg in ("--set", item)]
        command = [sys.executable, "-m", "orchestrator", "train", CONFIG, *overrides]
        env = os.environ | {"PYTHONPATH": str(tree)}
        with _LoadSampler() as load:
            began = time.monotonic()
            done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
            process_s = time.monotonic() - began
        if done.returncode:
            raise SystemExit(f"the main job failed at {tree} (status {done.returncode}):\n{done.stderr[-3000:]}")
        (run,) = [p.parent for p in Path(tmp).glob("*/summary.json")]
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        figures = run_figures(records, json.loads((run / "summary.json").read_text()), process_s)
    return figures | {"load_1m": {"mean": statistics.fmean(load.samples), "max": max(load.samples)}}


def _phases(runs: list[dict[str, Any]]) -> list[str]:
    """The `timings` phases (seconds) a side's runs recorded, in the order the first one wrote them."""
    recorded = [r["timings"] for r in runs if r["timings"] is not None]
    return [k for k in recorded[0] if k.endswith("_s")] if recorded else []


def aggregate(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, dict[str, float]]]:
    """Each figure's and each recorded phase's summary over the repetitions, by side."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for side, side_runs in runs.items():
        for key in FIGURES:
            out.setdefault(key, {})[side] = summarize([r[key] for r in side_runs])
        for phase in _phases(side_runs):
            values = [r["timings"][phase] for r in side_runs if r["timings"] and phase in r["timings"]]
            out.setdefault(f"timings.{phase}", {})[side] = summarize(values)
    return out


def _cell(stats: dict[str, float] | None) -> str:
    return "not recorded" if stats is None else median_range(stats, "{:.2f}")


def _change(figure: dict[str, dict[str, float]]) -> str:
    if "base" not in figure or "head" not in figure or not figure["base"]["median"]:
        return ""
    return f"{figure['head']['median'] / figure['base']['median'] - 1:+.0%}"


def _rows(figures: dict[str, dict[str, dict[str, float]]], keys: list[tuple[str, str]]) -> list[str]:
    return [
        f"| {what} | {_cell(figures[key].get('base'))} | {_cell(figures[key].get('head'))} | {_change(figures[key])} |"
        for key, what in keys
        if key in figures
    ]


def tables(record: dict[str, Any]) -> dict[str, str]:
    """Markdown tables of a result record, by block name: the figures every commit yields, the
    phases the commits record, and the host's load through each run."""
    results = record["results"]
    figures, base, head = results["figures"], results["base"], results["head"]
    header = f"| figure | base {base['commit']} | head {head['commit']} | change |\n|---|---:|---:|---:|\n"
    phases = [k for k in figures if k.startswith("timings.")]
    load = "| rep | side | order | load 1 min, mean | max | process s |\n|---:|---|---:|---:|---:|---:|\n" + "\n".join(
        f"| {run['rep']} | {side} | {run['order']} | {run['load_1m']['mean']:.2f} | {run['load_1m']['max']:.2f} "
        f"| {run['process_s']:.1f} |"
        for side in ("base", "head")
        for run in results[side]["runs"]
    )
    return {
        "main_job_costs": header + "\n".join(_rows(figures, list(FIGURES.items()))),
        "main_job_phases": header + "\n".join(_rows(figures, [(k, k.removeprefix("timings.")) for k in phases])),
        "main_job_load": load,
    }


def headline(record: dict[str, Any]) -> list[tuple[str, str]]:
    """README headline rows (what, figure): the fixed costs and the per-step figures, base → head."""
    figures = record["results"]["figures"]

    def row(key: str, unit: str, digits: int) -> str:
        base, head = figures[key]["base"]["median"], figures[key]["head"]["median"]
        return f"{base:.{digits}f} → {head:.{digits}f} {unit} ({_change(figures[key])})"

    return [
        ("main job: fixed costs outside learning (Ray, oracle, evaluations, start, shutdown)", row("fixed_s", "s", 1)),
        ("main job: seconds per RL step (median)", row("rl_step_s", "s", 2)),
        ("main job: seconds per BC warm-up step", row("bc_step_s", "s", 2)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="main", help="the commit to compare with (a detached worktree of it)")
    parser.add_argument("--reps", type=int, default=2, help="repetitions, each one run at each commit")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="a config override for both sides")
    parser.add_argument("--out", type=Path, default=None, help="the result file (default: bench/results/)")
    args = parser.parse_args()
    runs: dict[str, list[dict[str, Any]]] = {"base": [], "head": []}
    with base_tree(args.base) as (base_commit, base):
        for rep in range(args.reps):
            for order, (side, tree) in enumerate(interleaved(rep, base, HERE)):
                print(f"rep {rep}: {side} ({tree})", flush=True)
                runs[side].append(run_job(tree, args.sets) | {"rep": rep, "order": order})
    from orchestrator.provenance import commit

    results = {
        "base": {"commit": base_commit, "runs": runs["base"]},
        "head": {"commit": commit(), "runs": runs["head"]},
        "figures": aggregate(runs),
    }
    config = {"config": CONFIG, "sets": args.sets, "reps": args.reps, "base": args.base, "nice": os.nice(0)}
    path = write_result("main_job_costs", config, results, args.out)
    record = json.loads(path.read_text())
    for name, table in tables(record).items():
        print(f"\n{name}\n{table}")
    print_table(["headline", "figure"], [list(row) for row in headline(record)])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
