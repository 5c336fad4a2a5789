"""What the learner ranks train on, assembled in the trajectory buffer's process, never the driver's.

    groups the buffer hands out ──samples_from_groups (advantages, ECHO filters)──┐
    oracle transcripts (ledger)  ──this step's anchor, drawn by (seed, step)──────┴─► deal to ranks
                                 ──warm-up batches; the env-token CE's shares

Each rank's share goes into this process's object store (`in_object_store`): the driver holds
references and hands them to the ranks, which Ray gives the samples from here. The driver
sees the groups' summaries only (rewards, end reasons, sizes), for its logs.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any

import ray

from trainers.batching import DealtBatch, Sample, deal, samples_from_groups, split_for_ranks
from trainers.losses import LossConfig
from trainers.trajectory import GroupSummary, Trajectory, TrajectoryGroup


@dataclass(frozen=True)
class BatchPlan:
    """How the run's batches are made: the loss's advantage settings, the ranks, the draws."""

    loss: LossConfig
    world_size: int
    seed: int
    """The run's seed: the warm-up's and the anchors' draws follow it."""
    anchor_batch: int
    warmup_batch: int


@dataclass(frozen=True)
class TakenBatch:
    """One RL step as the driver sees it: the ranks' shares (references), the groups' summaries."""

    batch: DealtBatch
    groups: list[GroupSummary]
    samples: int
    """Samples trained on (failed episodes are left out): 0 skips the step."""


class LearnerBatches:
    def __init__(self, plan: BatchPlan, transcripts: dict[str, list[Trajectory]]) -> None:
        """`transcripts`: the oracle's, by split (TRAIN ones feed the warm-up and the anchors)."""
        self.plan = plan
        # Tokenized once for the whole run: every warm-up step, anchor and evaluation draws from these.
        self.transcripts = {split: [Sample.of(t) for t in episodes] for split, episodes in transcripts.items()}
        self._warmup_rng = random.Random(plan.seed)  # one stream over the warm-up's steps, in order

    def rl_step(self, groups: list[TrajectoryGroup], step: int) -> TakenBatch:
        """Learner step `step` (from 1) over `groups`, with its behaviour-cloning anchor."""
        samples = samples_from_groups(groups, self.plan.loss)
        batch = deal(samples, self.plan.world_size, self._anchor(step - 1))
        return TakenBatch(in_object_store(batch), [g.summary() for g in groups], len(samples))

    def _anchor(self, index: int) -> list[Sample]:
        """TRAIN oracle transcripts drawn by (seed, the step's index from 0), so that a resumed
        run draws the same ones."""
        train = self.transcripts["train"]
        rng = random.Random(f"anchor/{self.plan.seed}/{index}")
        return rng.sample(train, min(self.plan.anchor_batch, len(train)))

    def warmup(self) -> DealtBatch:
        """The warm-up's next batch: TRAIN oracle transcripts for behaviour cloning."""
        pool = self.transcripts["train"]
        batch = self._warmup_rng.sample(pool, min(self.plan.warmup_batch, len(pool)))
        return in_object_store(deal(batch, self.plan.world_size))

    def transcript_shares(self, split: str) -> list[Any]:
        """The split's oracle transcripts dealt to the ranks, for the env-token CE."""
        return [ray.put(share) for share in split_for_ranks(self.transcripts[split], self.plan.world_size)]


def in_object_store(batch: DealtBatch) -> DealtBatch:
    """The batch with each share put in this process's object store, as references."""
    return dataclasses.replace(
        batch,
        shares=[ray.put(share) for share in batch.shares],
        anchor_shares=[ray.put(share) for share in batch.anchor_shares],
    )
