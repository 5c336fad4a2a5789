"""The trainer's sense of how far a run has come, which drives the learning-rate decay."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from hillclimb.config import load_config
from orchestrator.train import Trainer

REPO = Path(__file__).parents[2]


def _trainer(tmp_path: Path, *overrides: str) -> Trainer:
    config = load_config(REPO / "configs" / "echo_toy.yaml", ["train.steps=200", *overrides])
    return Trainer(config, tmp_path)


def test_progress_counts_steps_without_a_time_budget(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, "train.time_budget_s=null")
    trainer.rl_started = time.monotonic() - 10_000  # time does not count without a budget
    trainer.step = 50
    assert trainer._progress() == pytest.approx(0.25)
    trainer.step = 200
    assert trainer._progress() == 1.0


def test_progress_follows_the_time_budget_when_it_ends_the_run_first(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, "train.time_budget_s=100")
    trainer.step = 20  # 10% of the steps, but 60% of the time
    trainer.rl_started = time.monotonic() - 60
    assert trainer._progress() == pytest.approx(0.6, abs=0.01)
    trainer.rl_started = time.monotonic() - 500
    assert trainer._progress() == 1.0


def test_the_time_budget_counts_the_rl_phase_only(tmp_path: Path) -> None:
    """A 60 s budget used to be spent by the warm-up, leaving 0 RL steps without a word."""
    trainer = _trainer(tmp_path, "train.time_budget_s=60")
    trainer.started = time.monotonic() - 3600  # an hour of oracle transcripts, warm-up and evaluations
    trainer.rl_started = time.monotonic()
    trainer.step = 20
    assert trainer._progress() == pytest.approx(0.1, abs=0.01)
