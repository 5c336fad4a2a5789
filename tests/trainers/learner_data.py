"""What the learner tests train on: a tiny model, a config, and made-up trajectory groups."""

from __future__ import annotations

import random

from hillclimb.config.learner import LearnerConfig, LoraConfig
from hillclimb.config.models import TinyModelConfig
from tests.factories import trajectory
from trainers.batching import Sample, StepTotals, samples_from_groups
from trainers.losses import LossConfig
from trainers.roles import Role
from trainers.trajectory import TrajectoryGroup

MODEL = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_positions=128)
CONFIG = LearnerConfig(
    lr=1e-2,
    micro_batch_tokens=96,
    loss=LossConfig.model_validate({"echo": {"schedule": {"type": "constant", "value": 0.5}}}),
)
LORA = CONFIG.model_copy(update={"lora": LoraConfig(rank=4, alpha=8)})


def groups_of_seed(seed: int, n_groups: int = 3, size: int = 4) -> list[TrajectoryGroup]:
    rng = random.Random(seed)
    groups = []
    for g in range(n_groups):
        members = []
        for i in range(size):
            n = rng.randint(12, 40)
            roles = [int(Role.PROMPT)] * 4 + [
                rng.choice([int(Role.ACTION), int(Role.ENV), int(Role.SCAFFOLD)]) for _ in range(n - 4)
            ]
            members.append(
                trajectory(
                    f"g{seed}-{g}",
                    i,
                    task_id=f"t{g}",
                    # the rng draws in this order (ids, log-probs, reward): keep it, or each seed's data changes
                    token_ids=[rng.randrange(256) for _ in range(n)],
                    roles=roles,
                    logprobs=[rng.uniform(-3, -0.1) if r == Role.ACTION else 0.0 for r in roles],
                    reward=float(rng.random() < 0.5),
                    turns=2,
                )
            )
        groups.append(TrajectoryGroup.of(members))
    return groups


def batch_of_step(step: int) -> list[Sample]:
    return samples_from_groups(groups_of_seed(step), CONFIG.loss)


def train_step_of(learner, step: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """One RL step of `learner` on step `step`'s batch."""
    samples = batch_of_step(step)
    return learner.train_step(samples, StepTotals.of(samples), step)
