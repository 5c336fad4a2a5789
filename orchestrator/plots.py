"""PNG plots of a training run from its metrics.jsonl records (matplotlib, no display needed).

One x-axis for the whole run, the warm-up shaded before RL:

    -W (initial eval) ··· warm-up steps ··· 0 (eval after warm-up) ─── RL steps 1 … N
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

Series = tuple[str, list[tuple[float, float]], str]  # label, (x, y) points, line style


def run_axis(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each record with `x`, its place on the run's axis: warm-up steps (and the evaluation before
    them) at negative x, so the initial and the after-warm-up evaluations do not share step 0."""
    warmup = sum(r["kind"] == "warmup" for r in records)
    placed = []
    for r in records:
        if r["kind"] == "eval_initial":
            x = -warmup
        elif r["kind"] == "warmup":
            x = r["step"] + 1 - warmup
        else:
            x = r["step"]
        placed.append({**r, "x": x})
    return placed


def _points(records: list[dict[str, Any]], kinds: tuple[str, ...], key: str) -> list[tuple[float, float]]:
    return [(r["x"], r[key]) for r in records if r["kind"] in kinds and key in r]


def _panels(records: list[dict[str, Any]]) -> list[tuple[str, str, str, bool, list[Series]]]:
    """(file, title, y label, whether the y axis is a 0–1 fraction, series) per figure."""
    evals = ("eval_initial", "eval")
    return [
        (
            "train_reward.png",
            "train reward (mean over the step's episodes)",
            "mean episode reward",
            True,
            [("train reward", _points(records, ("train",), "train_reward"), "-")],
        ),
        (
            "heldout_success.png",
            "held-out pass@1 (greedy)",
            "pass@1 (fraction of tasks solved)",
            True,
            [("held-out pass@1", _points(records, evals, "heldout_pass1"), "-")],
        ),
        (
            "env_token_ce.png",
            "cross-entropy (teacher-forced on oracle transcripts)",
            "cross-entropy (nats/token)",
            False,
            [
                ("env tokens, train split", _points(records, evals, "train_env_ce"), "-"),
                ("env tokens, held-out split", _points(records, evals, "heldout_env_ce"), "-"),
                ("action tokens, warm-up batches", _points(records, ("warmup",), "bc/action_ce"), "--"),
            ],
        ),
    ]


def plot_run(records: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fig in draw_run(records):
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        written.append(out_dir / name)
    return written


def draw_run(records: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """(file name, matplotlib figure) for each panel of the run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    warmup = sum(r["kind"] == "warmup" for r in records)
    figures = []
    for name, title, ylabel, fraction, series in _panels(run_axis(records)):
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, points, style in series:
            if points:
                ax.plot(*zip(*points, strict=True), style, marker="o", markersize=3, label=label)
        if warmup:
            ax.axvspan(-warmup, 0, color="0.9", label="warm-up (behaviour cloning)")
        if fraction:  # rewards beyond [0, 1] widen it rather than vanish
            ys = [y for _, points, _ in series for _, y in points]
            ax.set_ylim(min([0.0, *ys]) - 0.02, max([1.0, *ys]) + 0.02)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("RL step (warm-up steps before 0)" if warmup else "RL step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        figures.append((name, fig))
    return figures
