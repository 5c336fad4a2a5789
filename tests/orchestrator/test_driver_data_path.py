"""The trajectories' tokens never pass through the driver: a short `hillclimb train` on a
simulated three-node cluster (driver and buffer on the head, one learner rank on each other
node), with every object the driver process serializes or deserializes weighed
(`bench.driver_traffic`). The warm-up, the RL steps (rollouts, batches, anchors, training,
weights) and the env-token CE move no trajectory data through it; only evaluation episodes,
which the driver scores and logs, come back to it (and the oracle's, played once)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bench.driver_traffic import DriverTraffic
from hillclimb.config import load_config
from orchestrator.train import Trainer

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.root]

REPO = Path(__file__).parents[2]
STEPS = 3
SHORT = [
    f"train.steps={STEPS}",
    "train.warmup_steps=1",
    "train.warmup_batch=4",
    "train.anchor_batch=2",
    "train.groups_per_step=2",
    "train.eval_every=100",
    "train.eval_tasks=2",
    "train.checkpoint_every=100",
    "train.time_budget_s=null",
    "ray.num_workers=2",
    "learner.num_learners=2",
    "learner.placement=spread",
    "learner.resources_per_learner={learner_node: 1}",
]


def _paused_while(traffic: DriverTraffic, method: Callable[..., Any]) -> Callable[..., Any]:
    async def uncounted(*args: Any, **kwargs: Any) -> Any:
        with traffic.paused():
            return await method(*args, **kwargs)

    return uncounted


async def test_no_trajectory_data_passes_through_the_driver(
    simulated_cluster: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(REPO / "configs" / "echo_toy.yaml", [*SHORT, f"run.dir={tmp_path}"])
    trainer = Trainer(config, tmp_path)
    with DriverTraffic() as traffic:
        for allowed in ("_oracle_transcripts", "_heldout_success"):  # episodes the driver scores and logs
            monkeypatch.setattr(trainer, allowed, _paused_while(traffic, getattr(trainer, allowed)))
        summary = await trainer.run()
    assert summary["rl_steps"] == STEPS and summary["warmup_steps"] == 1
    assert traffic.paused_trajectory_bytes > 0  # the hook sees the evaluation episodes come back
    assert traffic.total_bytes > 0  # and the rest: summaries, references, metrics, handles
    assert (traffic.trajectory_objects, traffic.trajectory_bytes) == (0, 0)
