"""The main job, shortened: `hillclimb train configs/echo_toy.yaml` end to end, then resumed."""

from __future__ import annotations

import collections
import json
import sys
from pathlib import Path

import pytest

from orchestrator.ledger import Ledger
from orchestrator.train import MetricsLog
from tests.scrape import ScrapedRun, lease_counts, run_and_scrape

pytestmark = [
    pytest.mark.slow,
    pytest.mark.ray,
    pytest.mark.root,
]

REPO = Path(__file__).parents[2]
SHORT = [
    "train.warmup_steps=2",
    "train.eval_every=2",
    "train.eval_tasks=4",
    "train.groups_per_step=2",
    "train.checkpoint_every=2",
    "train.time_budget_s=null",
]


def _train(run_dir: Path, *overrides: str) -> ScrapedRun:
    """The main job, its /metrics scraped while it runs."""
    sets = [arg for item in (*SHORT, f"run.dir={run_dir}", *overrides) for arg in ("--set", item)]
    command = [sys.executable, "-m", "orchestrator", "train", "configs/echo_toy.yaml", *sets, "--metrics-port", "0"]
    return run_and_scrape(command, cwd=REPO, timeout_s=900)


def _consumed(run: Path) -> dict[int, int]:
    """Groups each learner step consumed. The ledger keeps one consumption per group, the latest:
    a group used twice would move to its later step, and the per-step counts would show it."""
    consumed = [e for e in Ledger(run / "ledger").events() if e["event"] == "consumed"]
    assert all(e["group"].startswith("train-") for e in consumed)
    return dict(collections.Counter(e["step"] for e in consumed))


def test_the_main_job_writes_a_complete_run_and_resumes_it(tmp_path: Path) -> None:
    first = _train(tmp_path, "train.steps=3")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "run summary" in first.stdout and "metrics: http://127.0.0.1:" in first.stdout
    # One endpoint for the run: the rollout worker's leases and the buffer's depth came through it.
    assert max(lease_counts(samples).get("worker-0", 0) for samples in first.scrapes) > 0
    assert any(("hillclimb_buffer_depth_groups", frozenset({("source", "buffer")})) in s for s in first.scrapes)
    run = tmp_path / "echo-toy"
    assert json.loads((run / "config.json").read_text())["env"]["name"] == "toy_terminal"
    kinds = [(r["kind"], r["step"]) for r in MetricsLog(run).read()]
    assert kinds[0] == ("eval_initial", 0) and ("warmup", 1) in kinds
    assert [s for k, s in kinds if k == "train"] == [1, 2, 3]
    assert [s for k, s in kinds if k == "eval"] == [0, 2, 3]
    for step in ("step-000002", "step-000003"):
        assert {p.name for p in (run / "checkpoints" / step).iterdir()} == {"state", "trainer.json"}
    assert sorted(p.name for p in (run / "plots").iterdir()) == [
        "env_token_ce.png",
        "heldout_success.png",
        "train_reward.png",
    ]
    train = [r for r in MetricsLog(run).read() if r["kind"] == "train"]
    assert all(r["anchor/action_ce"] > 0 and r["time/train_s"] > 0 for r in train)  # the shipped BC anchor rides along
    summary = json.loads((run / "summary.json").read_text())
    assert summary["rl_steps"] == 3 and summary["warmup_steps"] == 2 and summary["anchor_batch"] == 8
    assert set(summary["heldout_env_ce"]) == {"initial", "after_warmup", "final", "fall_from_initial", "fall_during_rl"}
    assert _consumed(run) == {1: 2, 2: 2, 3: 2}  # 2 groups a step, rollouts and training in turn (max_staleness 0)

    # Resumed in the asynchronous mode: rollouts for the next step run while this one trains.
    second = _train(tmp_path, "train.steps=5", "run.resume=true", "buffer.max_staleness=1")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resuming at step 3 from" in second.stdout and "step-000003" in second.stdout
    assert [r["step"] for r in MetricsLog(run).read() if r["kind"] == "train"] == [1, 2, 3, 4, 5]
    assert (run / "checkpoints" / "step-000005" / "state" / ".metadata").exists()
    assert _consumed(run) == {step: 2 for step in range(1, 6)}  # steps 4 and 5 follow on, nothing used twice
    # The shipped decay anneals the last 30% of the (resumed, 5-step) run: step 5 starts at 80%.
    lrs = [r["lr"] for r in MetricsLog(run).read() if r["kind"] == "train"]
    assert lrs == [pytest.approx(3e-3)] * 4 + [pytest.approx(3e-3 * (1 - 0.8) / 0.3)]
