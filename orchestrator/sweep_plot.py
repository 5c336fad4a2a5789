"""The λ sweep's figure: held-out env-token CE and pass@1 at the end of each run, against λ.

λ spans decades (0.005 … 1), so x is logarithmic; λ = 0 has no place on a log axis and is drawn
one decade left of the smallest positive λ, labelled 0, past a dotted line. One dot per seed, a
line through the means.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

PANELS = (
    ("heldout_env_ce", "held-out env-token CE at the end", "cross-entropy (nats/token)", False),
    ("heldout_pass1", "held-out pass@1 at the end (greedy)", "pass@1 (fraction of tasks solved)", True),
)
"""(row key, title, y label, whether y is a 0–1 fraction) per panel."""


def x_positions(lambdas: list[float]) -> dict[float, float]:
    """Where each λ sits on the log axis: itself, and 0 a decade below the smallest positive λ."""
    positive = [lam for lam in lambdas if lam > 0]
    zero_at = min(positive) / 10 if positive else 1.0
    return {lam: lam if lam > 0 else zero_at for lam in lambdas}


def plot_sweep(rows: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lambdas = sorted({r["lambda"] for r in rows})
    at = x_positions(lambdas)
    fig, axes = plt.subplots(1, len(PANELS), figsize=(10, 4))
    for ax, (key, title, ylabel, fraction) in zip(axes, PANELS, strict=True):
        measured = [r for r in rows if r[key] is not None]
        ax.plot([at[r["lambda"]] for r in measured], [r[key] for r in measured], "o", alpha=0.4, label="one seed")
        means = [(at[lam], statistics.fmean(ys)) for lam in lambdas if (ys := _values(measured, lam, key))]
        if means:
            ax.plot(*zip(*means, strict=True), "-", marker="s", label="mean over seeds")
        ax.set_xscale("log")
        if 0 in at and len(at) > 1:  # the break between λ = 0 and the log axis proper
            ax.axvline(at[0] * 10**0.5, color="0.6", linestyle=":", linewidth=1)
        if fraction:
            ax.set_ylim(-0.02, 1.02)
        ax.set_xticks([at[lam] for lam in lambdas], [format(lam, "g") for lam in lambdas])
        ax.minorticks_off()
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("ECHO λ (log scale; 0 at the left)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _values(rows: list[dict[str, Any]], lam: float, key: str) -> list[float]:
    return [r[key] for r in rows if r["lambda"] == lam]
