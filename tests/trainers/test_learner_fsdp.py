"""FSDP on CPU (gloo): two sharded ranks make the same update, weights, evaluation and
checkpoints as one unsharded rank, and a sharded checkpoint resumes bit for bit.

Every call that gathers a sharded model is a collective: these tests fail by hanging (the
suite's timeout) if a rank is left out, and by mismatch if a rank saw only its shard."""

from __future__ import annotations

import asyncio

import pytest
import torch
from learner_data import CONFIG, MODEL, batch_of_step

from hillclimb.config.learner import LearnerConfig
from orchestrator.learner_group import LearnerGroup
from trainers.batching import Sample, deal, split_for_ranks
from trainers.learner import Learner
from trainers.losses import LossConfig

pytestmark = [pytest.mark.ray, pytest.mark.slow]

FSDP = CONFIG.model_copy(update={"num_learners": 2, "strategy": "fsdp"})


def _assert_weights_close(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for name in want:  # as for DDP: Adam's 1/sqrt(v) magnifies the float noise of tiny gradients
        torch.testing.assert_close(got[name], want[name], rtol=1e-3, atol=1e-4)


async def _env_ce(group: LearnerGroup, samples: list[Sample]) -> float:
    return await group.env_cross_entropy(split_for_ranks(samples, group.world_size))


async def test_two_sharded_ranks_train_evaluate_and_publish_as_one_unsharded_rank(ray_local: None) -> None:
    one, two = LearnerGroup(MODEL, CONFIG), LearnerGroup(MODEL, FSDP)
    try:
        for step in range(2):
            samples, anchor = batch_of_step(step), batch_of_step(step + 10)
            single = await one.train_step(deal(samples, one.world_size, anchor), step)
            double = await two.train_step(deal(samples, two.world_size, anchor), step)
            assert double["loss"] == pytest.approx(single["loss"], rel=1e-5)
            assert double["grad_norm"] == pytest.approx(single["grad_norm"], rel=1e-4)  # the whole model's norm
            g1 = await one.ranks[0].gradients.remote()
            g2, _ = await asyncio.gather(*(rank.gradients.remote() for rank in two.ranks))  # a collective
            for name in g1:
                torch.testing.assert_close(g2[name], g1[name], rtol=1e-3, atol=1e-6)
        bc_single = await one.train_step(deal(batch_of_step(5), one.world_size), 2, imitate=True)
        bc_double = await two.train_step(deal(batch_of_step(5), two.world_size), 2, imitate=True)
        assert bc_double["bc/action_ce"] == pytest.approx(bc_single["bc/action_ce"], rel=1e-4)
        _assert_weights_close(await two.weights(), await one.weights())
        # Evaluation shares the samples out; a rank with fewer micro-batches pads its passes.
        held_out = batch_of_step(7)[:5]
        assert await _env_ce(two, held_out) == pytest.approx(await _env_ce(one, held_out), rel=1e-4)
    finally:
        one.shutdown()
        two.shutdown()


async def test_a_rank_with_no_samples_still_takes_part(ray_local: None) -> None:
    one, two = LearnerGroup(MODEL, CONFIG), LearnerGroup(MODEL, FSDP)
    try:
        lonely = batch_of_step(3)[:1]  # one sample: rank 1 has nothing to train or measure
        single = await one.train_step(deal(lonely, one.world_size), 0)
        double = await two.train_step(deal(lonely, two.world_size), 0)
        assert double["loss"] == pytest.approx(single["loss"], rel=1e-5)
        _assert_weights_close(await two.weights(), await one.weights())
        assert await _env_ce(two, lonely) == pytest.approx(await _env_ce(one, lonely), rel=1e-5)
    finally:
        one.shutdown()
        two.shutdown()


async def test_a_sharded_checkpoint_resumes_bit_exact_and_loads_unsharded(ray_local: None, tmp_path) -> None:
    straight, first, resumed = (LearnerGroup(MODEL, FSDP) for _ in range(3))
    try:
        for step in range(4):
            await straight.train_step(deal(batch_of_step(step), straight.world_size), step)
        for step in range(2):
            await first.train_step(deal(batch_of_step(step), first.world_size), step)
        checkpoint = await first.save(str(tmp_path / "ck"), step=2, version=2)
        saved = await first.weights()
        # One unsharded process reads what two sharded ranks wrote: the same full tensors.
        alone = Learner(MODEL, CONFIG.model_copy(update={"seed": 7}))
        assert alone.load(checkpoint)["step"] == 2
        assert all(torch.equal(alone.weights()[name], saved[name]) for name in saved)
        info = await resumed.load(checkpoint)
        assert info["version"] == 2
        for step in range(2, 4):
            await resumed.train_step(deal(batch_of_step(step), resumed.world_size), step)
        want, got = await straight.weights(), await resumed.weights()
        assert all(torch.equal(got[name], want[name]) for name in want)  # bit for bit, optimizer state included
    finally:
        for group in (straight, first, resumed):
            group.shutdown()


def test_sharded_learners_refuse_the_kl_reference_they_cannot_keep() -> None:
    kl = LossConfig.model_validate({"grpo": {"kl_coef": 0.1}})
    with pytest.raises(ValueError, match="kl_coef=0 or learner.strategy=ddp"):
        LearnerConfig(num_learners=2, strategy="fsdp", loss=kl)
    LearnerConfig(num_learners=1, strategy="fsdp", loss=kl)  # one rank shards nothing
