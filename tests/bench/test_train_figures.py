"""bench.train_figures reads a run's own files: per-step times and the learner's token rate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.train_figures import figures


def test_figures_come_from_the_runs_metrics(tmp_path: Path) -> None:
    steps = [
        {"kind": "train", "step": i, "time/rollouts_s": 2.0, "time/train_s": t, "time/publish_s": 0.5,
         "grpo/n_action_tokens": 30, "echo/n_env_tokens": 70, "learner/tokens": 400}
        for i, t in enumerate((1.0, 2.0, 4.0))
    ]  # fmt: skip
    lines = [{"kind": "eval_initial", "step": 0}, *steps]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (tmp_path / "summary.json").write_text(json.dumps({"rl_steps": 3}))
    got = figures(tmp_path)
    assert got["rl_steps"] == 3 and got["summary"] == {"rl_steps": 3}
    assert got["step_s"]["median"] == 4.5 and got["train_s"]["max"] == 4.0
    assert got["learner_trained_tokens_per_s"]["median"] == 50.0  # 100 tokens in 2 s
    assert got["learner_tokens_per_s"]["median"] == 200.0


def test_a_run_without_rl_steps_is_refused(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"kind": "warmup", "step": 0}) + "\n")
    with pytest.raises(SystemExit, match="has no RL steps"):
        figures(tmp_path)


def test_a_run_from_before_learner_tokens_has_no_such_rate(tmp_path: Path) -> None:
    step = {"kind": "train", "step": 1, "time/rollouts_s": 1.0, "time/train_s": 1.0, "time/publish_s": 0.1,
            "grpo/n_action_tokens": 3, "echo/n_env_tokens": 7}  # fmt: skip
    (tmp_path / "metrics.jsonl").write_text(json.dumps(step) + "\n")
    (tmp_path / "summary.json").write_text("{}")
    got = figures(tmp_path)
    assert "learner_tokens_per_s" not in got and got["learner_trained_tokens_per_s"]["median"] == 10.0
