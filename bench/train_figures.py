"""A finished training run's figures, from its own files: seconds per RL step and where they went
(rollouts, training, publishing weights to the policy engine), the learner's trained tokens per
second, and held-out pass@1 and env-token CE before and after.

    python -m bench.train_figures RUN_DIR --name echo_smollm2   ─► bench/results/echo_smollm2.json

Trained tokens are the ACTION and ENV targets the loss saw (`grpo/n_action_tokens` +
`echo/n_env_tokens`), per second of the step's training time, as `bench.learner_gpu` counts
them; the learner's tokens are every position it ran forward and backward over (`learner/tokens`:
prompts, scaffold and the anchor's transcripts too), the work it did. The result is credited to
the commit the run recorded in its run.json, not to this checkout's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.common import markdown_table, print_table, summarize, write_result


def figures(run_dir: Path) -> dict:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in records if r.get("kind") == "train"]
    if not steps:
        raise SystemExit(f"{run_dir} has no RL steps in metrics.jsonl")
    trained = [r["grpo/n_action_tokens"] + r.get("echo/n_env_tokens", 0) for r in steps]
    return {
        "rl_steps": len(steps),
        "step_s": summarize([r["time/rollouts_s"] + r["time/train_s"] + r["time/publish_s"] for r in steps]),
        "rollouts_s": summarize([r["time/rollouts_s"] for r in steps]),
        "train_s": summarize([r["time/train_s"] for r in steps]),
        "publish_s": summarize([r["time/publish_s"] for r in steps]),
        "learner_trained_tokens_per_s": summarize([n / r["time/train_s"] for n, r in zip(trained, steps, strict=True)]),
        "trained_tokens_per_step": summarize([float(n) for n in trained]),
        "summary": json.loads((run_dir / "summary.json").read_text()),
    } | _all_positions_rate(steps)


def _all_positions_rate(steps: list[dict]) -> dict:
    """The learner's rate over every position, for runs whose metrics count them (since `learner/tokens`)."""
    if not all("learner/tokens" in r for r in steps):
        return {}
    return {"learner_tokens_per_s": summarize([r["learner/tokens"] / r["time/train_s"] for r in steps])}


def _table(results: dict) -> tuple[list[str], list[list[str]]]:
    rows = [
        [case, f"{results[key]['median']:.1f}", f"{results[key]['min']:.1f}–{results[key]['max']:.1f}"]
        if key in results
        else [case, "not recorded", ""]
        for case, key in (
            ("s per RL step", "step_s"),
            ("  rollouts", "rollouts_s"),
            ("  training", "train_s"),
            ("  weights to the engine", "publish_s"),
            ("learner tokens/s (all positions)", "learner_tokens_per_s"),
            ("learner trained tokens/s", "learner_trained_tokens_per_s"),
        )
    ]
    return ["figure", "median", "range"], rows


def _learning_table(summary: dict) -> tuple[list[str], list[list[str]]]:
    ce, pass1, reward = summary["heldout_env_ce"], summary["heldout_pass1"], summary["train_reward"]
    falls = f"{-ce['fall_from_initial']:+.1%}; {-ce['fall_during_rl']:+.1%} over RL"
    rows = [
        [
            "held-out env-token CE (nats/token): initial → after warm-up → end",
            f"{ce['initial']:.3f} → {ce['after_warmup']:.3f} → {ce['final']:.3f} ({falls})",
        ],
        ["held-out pass@1: after warm-up → end", f"{pass1['after_warmup']:.3f} → {pass1['final']:.3f}"],
        ["train reward: first → last RL steps", f"{reward['first_steps']:.2f} → {reward['last_steps']:.2f}"],
        ["λ; warm-up steps; RL steps", f"{summary['echo_lambda']:g}; {summary['warmup_steps']}; {summary['rl_steps']}"],
        ["wall time of the run", f"{summary['wall_s']:.0f} s"],
    ]
    return ["figure", "value"], rows


def tables(record: dict) -> dict[str, str]:
    results = record["results"]
    return {
        "steps": markdown_table(*_table(results)),
        "learning": markdown_table(*_learning_table(results["summary"])),
    }


def headline(record: dict) -> list[tuple[str, str]]:
    summary = record["results"]["summary"]
    ce = summary["heldout_env_ce"]
    return [
        (
            f"{record['config']['run']['name']}: held-out env-token CE, start → end of {summary['rl_steps']} RL steps",
            f"{ce['initial']:.2f} → {ce['final']:.2f} nats/token ({-ce['fall_from_initial']:+.1%})",
        )
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--name", required=True, help="the result file's name under bench/results/")
    args = parser.parse_args()
    results = figures(args.run_dir)
    summary = results["summary"]
    print_table(*_table(results))
    ce, pass1 = summary["heldout_env_ce"], summary["heldout_pass1"]
    print(f"held-out env CE {ce['initial']:.3f} → {ce['after_warmup']:.3f} (warm-up) → {ce['final']:.3f}")
    print(f"held-out pass@1 {pass1['after_warmup']:.3f} (after warm-up) → {pass1['final']:.3f}")
    config = json.loads((args.run_dir / "config.json").read_text())
    made_by = json.loads((args.run_dir / "run.json").read_text()).get("commit")
    if made_by is None:
        raise SystemExit(f"{args.run_dir}/run.json names no commit (a run from before runs recorded theirs)")
    print(f"wrote {write_result(args.name, config, results, measured_at=made_by)}")


if __name__ == "__main__":
    main()
