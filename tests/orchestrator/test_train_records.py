"""metrics.jsonl across resumes and interruptions: each step once, a summary of what was done."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hillclimb.config import load_config
from orchestrator.train import MetricsLog, Trainer

REPO = Path(__file__).parents[2]


def _write_run(log: MetricsLog, last_step: int) -> None:
    log.write("eval_initial", 0, {"heldout_env_ce": 4.0, "train_env_ce": 4.0})
    for w in range(2):
        log.write("warmup", w, {"bc/action_ce": 1.0})
    log.write("eval", 0, {"heldout_env_ce": 3.0, "train_env_ce": 3.0, "heldout_pass1": 0.0})
    for step in range(1, last_step + 1):
        log.write("train", step, {"train_reward": 0.5})
        if step % 10 == 0:
            log.write("eval", step, {"heldout_env_ce": 2.0, "train_env_ce": 2.0, "heldout_pass1": 0.5})


def _kinds(records: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(r["kind"], r["step"]) for r in records]


def test_a_resume_drops_the_records_after_the_checkpoint(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path)
    _write_run(log, 13)  # checkpointed at step 10, stopped during step 14
    log.keep_until(10)
    kept = log.read()
    assert _kinds(kept)[-3:] == [("train", 9), ("train", 10), ("eval", 10)]
    assert ("warmup", 1) in _kinds(kept) and ("eval_initial", 0) in _kinds(kept)
    for step in (11, 12, 13):  # the resumed run writes them again, once each
        log.write("train", step, {"train_reward": 1.0})
    steps = [r["step"] for r in log.read() if r["kind"] == "train"]
    assert steps == list(range(1, 14))
    assert not list(tmp_path.glob("*.partial"))


def test_a_fresh_start_in_an_old_run_directory_forgets_its_records(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path)
    _write_run(log, 3)
    log.keep_until(None)
    assert log.read() == []


def _trainer(tmp_path: Path) -> Trainer:
    return Trainer(load_config(REPO / "configs" / "echo_toy.yaml", [f"run.dir={tmp_path}"]), tmp_path)


def test_the_summary_counts_rl_steps_from_the_records(tmp_path: Path) -> None:
    """A run dir resumed before records were dropped holds steps 11–13 twice: 32 records, step 29."""
    trainer = _trainer(tmp_path)
    _write_run(trainer.log, 13)
    for step in range(11, 30):
        trainer.log.write("train", step, {"train_reward": 0.5})
    trainer.log.write("eval", 29, {"heldout_env_ce": 2.0, "train_env_ce": 2.0, "heldout_pass1": 0.5})
    summary = trainer.finish()
    assert summary["rl_steps"] == 29 and summary["warmup_steps"] == 2 and summary["interrupted"] is False
    assert summary["heldout_env_ce"]["fall_from_initial"] == 0.5
    assert summary["timings"]["other_s"] == summary["timings"]["total_s"]  # no phase ran: all of it is other
    assert json.loads((tmp_path / "summary.json").read_text()) == summary


def test_an_interrupted_run_summarizes_what_it_did(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path)
    trainer.log.write("eval_initial", 0, {"heldout_env_ce": 4.0, "train_env_ce": 4.0})
    trainer.log.write("warmup", 0, {"bc/action_ce": 1.0})  # stopped during the warm-up
    summary = trainer.finish(interrupted=True)
    assert summary["interrupted"] is True and summary["rl_steps"] == 0 and summary["warmup_steps"] == 1
    assert summary["heldout_env_ce"]["initial"] == 4.0 and summary["heldout_env_ce"]["final"] is None
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "env_token_ce.png",
        "heldout_success.png",
        "train_reward.png",
    ]
