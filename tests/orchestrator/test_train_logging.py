"""A short `hillclimb train` with TensorBoard and W&B (offline) configured, then read back the way
a user would: the event files, wandb's offline run, samples.jsonl, `runs ls` and `runs show`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.ledger import Ledger
from tests.orchestrator import wandb_offline

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.root]

REPO = Path(__file__).parents[2]
SHORT = [
    "train.steps=2",
    "train.warmup_steps=1",
    "train.warmup_batch=4",
    "train.anchor_batch=2",
    "train.groups_per_step=1",
    "train.eval_every=1",
    "train.eval_tasks=3",
    "train.checkpoint_every=2",
    "train.time_budget_s=null",
    "log.tensorboard={}",
    "log.wandb.mode=offline",
    "log.sampled_episodes=2",
]


def _hillclimb(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_a_training_run_logs_to_tensorboard_wandb_and_its_run_dir(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    env = os.environ | {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "COLUMNS": "80"}
    sets = [arg for item in (*SHORT, f"run.dir={tmp_path}") for arg in ("--set", item)]
    _hillclimb("train", "configs/echo_toy.yaml", *sets, env=env)
    run_dir = tmp_path / "echo-toy"

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"tensors": 0, "scalars": 0}).Reload()
    assert [e.step for e in events.Scalars("train/train_reward")] == [1, 2]
    assert [e.step for e in events.Scalars("warmup/bc/action_ce")] == [0]
    assert [e.step for e in events.Scalars("eval/heldout_pass1")] == [0, 1, 2]
    assert [e.step for e in events.Tensors("eval/episodes/text_summary")] == [0, 1, 2]

    offline = wandb_offline.offline_run(run_dir)  # the run finished: its exit record is there
    rows = wandb_offline.history(offline)
    assert [row["train/step"] for row in rows if "train/train_reward" in row] == [1, 2]

    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [0, 0, 1, 1, 2, 2]
    ledger = Ledger(run_dir / "ledger").trajectories()
    for step in (0, 1, 2):  # each evaluation's first two tasks by id
        played = sorted(t.task_id for t in ledger if t.group_id.startswith(f"eval{step}-"))
        assert [s["task_id"] for s in samples if s["step"] == step] == played[:2]
    assert all(s["prompt"] and s["split"] == "heldout" for s in samples)

    listed = _hillclimb("runs", "ls", "--root", str(tmp_path), env=env).stdout.splitlines()
    assert listed[1].split()[:2] == ["echo-toy", "train"] and "2/2 steps" in listed[1]
    assert listed[1].split()[-1] == "finished"
    shown = _hillclimb(
        "runs", "show", "echo-toy", "--root", str(tmp_path), "--split", "heldout", "--episode", "0", env=env
    )
    assert "<PROMPT>" in shown.stdout and "<SCAFFOLD>$ </SCAFFOLD><ACTION>" in shown.stdout
