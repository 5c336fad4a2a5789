"""configs/echo_smollm2.yaml, shortened: the real pretrained model trained end to end through its
chat template with LoRA, only the adapters checkpointed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from trainers.checkpoint import read_weights

# The model is loaded, warmed up, trained and evaluated in a subprocess: give it the subprocess's own limit.
pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.root, pytest.mark.timeout(900)]

REPO = Path(__file__).parents[2]
SHORT = [
    "train.steps=1",
    "train.warmup_steps=1",
    "train.warmup_batch=2",
    "train.groups_per_step=1",
    "train.eval_every=1",
    "train.eval_tasks=2",
    "train.checkpoint_every=1",
    "rollout.group_size=2",
    "rollout.episode.max_turns=1",
    "rollout.episode.sampling.max_new_tokens=8",
]


def test_the_smollm2_config_trains_lora_adapters_to_its_end(tmp_path: Path) -> None:
    sets = [arg for item in (*SHORT, f"run.dir={tmp_path}") for arg in ("--set", item)]
    command = [sys.executable, "-m", "orchestrator", "train", "configs/echo_smollm2.yaml", *sets]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = tmp_path / "echo-smollm2"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["rl_steps"] == 1 and summary["heldout_env_ce"]["final"] > 0
    checkpoint = run / "checkpoints" / "step-000001"
    assert json.loads((checkpoint / "trainer.json").read_text())["lora"]["rank"] == 16
    names = list(read_weights(checkpoint))
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)  # the adapters, not 538 MB of model
