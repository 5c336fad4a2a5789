"""The learners' batches, made beside the buffer: the samples, advantages, shares and totals the
driver used to make, the same anchors and warm-up draws for the same seed, and references the
ranks resolve (the samples stay in the buffer's object store)."""

from __future__ import annotations

import random

import pytest

from orchestrator.learner_batches import BatchPlan, LearnerBatches
from tests.factories import group, trajectory
from trainers.batching import Sample, StepTotals, samples_from_groups, split_for_ranks
from trainers.losses import LossConfig

pytestmark = [pytest.mark.ray]

PLAN = BatchPlan(LossConfig(), world_size=2, seed=7, anchor_batch=2, warmup_batch=3)
ORACLE = {
    "train": [
        trajectory(f"oracle-{i}", token_ids=[1] * (5 + i), roles=[3] * (5 + i), logprobs=[0.0] * (5 + i))
        for i in range(6)
    ],
    "heldout": [trajectory("oracle-h")],
}


def _resolved(shares: list) -> list[list[Sample]]:
    import ray

    return [ray.get(share) for share in shares]


def test_a_step_is_the_batch_the_driver_made(ray_local: None) -> None:
    groups = [group("a", rewards=[1.0, 0.0]), group("b", rewards=[0.0, 0.0, 1.0], size=3)]
    taken = LearnerBatches(PLAN, ORACLE).rl_step(groups, step=4)
    samples = samples_from_groups(groups, PLAN.loss)
    # (r - mean) / std within a group (unbiased std): [1, 0] → ±1/√2; [0, 0, 1] → -1/√3, -1/√3, 2/√3.
    root2, root3 = 2**0.5, 3**0.5
    want = [1 / root2, -1 / root2, -1 / root3, -1 / root3, 2 / root3]
    assert [s.advantage for s in samples] == pytest.approx(want, rel=1e-4)
    assert _resolved(taken.batch.shares) == split_for_ranks(samples, 2)
    assert taken.batch.totals == StepTotals.of(samples) and taken.samples == 5
    # Step 4's anchor, drawn as the trainer always drew it: by (seed, the step's index from 0).
    anchor = [Sample.of(t) for t in random.Random("anchor/7/3").sample(ORACLE["train"], 2)]
    assert _resolved(taken.batch.anchor_shares) == split_for_ranks(anchor, 2)
    assert [g.group_id for g in taken.groups] == ["a", "b"]
    assert [e.reward for g in taken.groups for e in g.episodes] == [1.0, 0.0, 0.0, 0.0, 1.0]
    assert taken.groups[0].episodes[0].tokens == {"PROMPT": 1, "SCAFFOLD": 1, "ACTION": 2, "ENV": 1}


def test_the_warm_up_draws_one_stream_from_the_run_seed(ray_local: None) -> None:
    batches = LearnerBatches(PLAN, ORACLE)
    rng = random.Random(7)
    pool = [Sample.of(t) for t in ORACLE["train"]]
    for _ in range(3):
        dealt = batches.warmup()
        want = rng.sample(pool, 3)
        assert _resolved(dealt.shares) == split_for_ranks(want, 2) and dealt.totals == StepTotals.of(want)
        assert _resolved(dealt.anchor_shares) == [[], []]


def test_the_env_ce_shares_deal_a_splits_transcripts(ray_local: None) -> None:
    shares = LearnerBatches(PLAN, ORACLE).transcript_shares("heldout")
    assert _resolved(shares) == [[Sample.of(ORACLE["heldout"][0])], []]
