"""The run's plots: labelled axes, fractions on [0, 1], the warm-up on the same axis as RL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pytest

from orchestrator.plots import draw_run, plot_run, run_axis

RECORDS: list[dict[str, Any]] = [
    {"kind": "eval_initial", "step": 0, "train_env_ce": 5.0, "heldout_env_ce": 5.5},
    *({"kind": "warmup", "step": w, "bc/action_ce": 3.0 - w} for w in range(3)),
    {"kind": "eval", "step": 0, "train_env_ce": 4.0, "heldout_env_ce": 4.5, "heldout_pass1": 0.25},
    {"kind": "train", "step": 1, "train_reward": 0.2},
    {"kind": "train", "step": 2, "train_reward": 0.4},
    {"kind": "eval", "step": 2, "train_env_ce": 3.0, "heldout_env_ce": 3.5, "heldout_pass1": 0.5},
]


@pytest.fixture
def figures() -> Any:
    drawn = dict(draw_run(RECORDS))
    yield {name: fig.axes[0] for name, fig in drawn.items()}
    for fig in drawn.values():
        plt.close(fig)


def test_the_initial_and_after_warmup_evaluations_are_apart() -> None:
    x = {(r["kind"], r["step"]): r["x"] for r in run_axis(RECORDS)}
    assert x[("eval_initial", 0)] == -3 and x[("eval", 0)] == 0
    assert [x[("warmup", w)] for w in range(3)] == [-2, -1, 0]
    assert x[("train", 1)] == 1


def test_every_axis_is_labelled_and_fractions_sit_on_0_to_1(figures: dict[str, Any]) -> None:
    assert figures["train_reward.png"].get_ylabel() == "mean episode reward"
    assert figures["heldout_success.png"].get_ylabel().startswith("pass@1")
    assert figures["env_token_ce.png"].get_ylabel() == "cross-entropy (nats/token)"
    for name in ("train_reward.png", "heldout_success.png"):
        low, high = figures[name].get_ylim()
        assert low == pytest.approx(-0.02) and high == pytest.approx(1.02)


def test_the_warmup_is_plotted(figures: dict[str, Any]) -> None:
    ce = figures["env_token_ce.png"]
    labels = [line.get_label() for line in ce.get_lines()]
    assert "action tokens, warm-up batches" in labels
    warm = next(line for line in ce.get_lines() if line.get_label().startswith("action"))
    assert list(warm.get_xdata()) == [-2, -1, 0] and list(warm.get_ydata()) == [3.0, 2.0, 1.0]
    assert any(t.get_text().startswith("warm-up") for t in ce.get_legend().get_texts())


def test_the_files_are_written(tmp_path: Path) -> None:
    written = plot_run(RECORDS, tmp_path)
    assert sorted(p.name for p in written) == ["env_token_ce.png", "heldout_success.png", "train_reward.png"]
    assert all(p.stat().st_size > 1000 for p in written)
