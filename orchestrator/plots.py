"""PNG plots of a training run from its metrics.jsonl records (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_run(records: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] in ("eval_initial", "eval")]
    panels = [
        ("train_reward.png", "train reward (mean over the step's episodes)", [("train reward", train, "train_reward")]),
        (
            "heldout_success.png",
            "held-out pass@1 (greedy)",
            [("held-out pass@1", [r for r in evals if "heldout_pass1" in r], "heldout_pass1")],
        ),
        (
            "env_token_ce.png",
            "env-token cross-entropy (nats/token, teacher-forced on oracle transcripts)",
            [("train split", evals, "train_env_ce"), ("held-out split", evals, "heldout_env_ce")],
        ),
    ]
    written = []
    for name, title, series in panels:
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, rows, key in series:
            ax.plot([r["step"] for r in rows], [r[key] for r in rows], marker="o", markersize=3, label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
        written.append(out_dir / name)
    return written
