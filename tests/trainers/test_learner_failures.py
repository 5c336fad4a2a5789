"""When learner ranks fail: the failing rank is named at once, the ranks it leaves waiting time out
instead of hanging, a rank nobody meets gives up, and a fraction of a GPU per rank is refused."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch.distributed as dist
from learner_data import CONFIG, MODEL, batch_of_step

from hillclimb.config.load import load_config
from hillclimb.errors import ConfigError
from orchestrator.learner_group import LearnerGroup, LearnerRankError
from trainers.batching import DealtBatch, Sample, StepTotals
from trainers.learner import Learner, free_port
from trainers.roles import Role

TIMEOUT_S = 20.0


def test_a_rank_nobody_meets_gives_up_after_the_collective_timeout() -> None:
    learner = Learner(MODEL, CONFIG.model_copy(update={"collective_timeout_s": 2.0}), rank=0, world_size=2)
    start = time.monotonic()
    with pytest.raises(dist.DistStoreError, match="1/2 clients joined"):  # torch's default: 30 minutes
        learner.join(f"tcp://127.0.0.1:{free_port()}")
    assert time.monotonic() - start < 15
    assert not dist.is_initialized()


@pytest.mark.ray
@pytest.mark.slow
async def test_a_rank_that_raises_is_named_and_the_rank_waiting_for_it_times_out(ray_local: None) -> None:
    group = LearnerGroup(MODEL, CONFIG.model_copy(update={"num_learners": 2, "collective_timeout_s": TIMEOUT_S}))
    try:
        await group.ready()
        good = batch_of_step(0)
        # A token id past the vocabulary: rank 1's embedding lookup raises, after the ranks agreed on
        # how many passes to make, so rank 0 goes on into its backward and waits there for rank 1.
        bad = [Sample([10**6] * 8, [int(Role.PROMPT)] * 4 + [int(Role.ACTION)] * 4, [0.0] * 8, 1.0, True)]
        batch = DealtBatch([good, bad], StepTotals.of(good + bad), [[], []], StepTotals(0.0, 0.0))
        start = time.monotonic()
        with pytest.raises(LearnerRankError, match=r"learner rank 1 failed in train_step: IndexError") as failed:
            await group.train_step(batch, 0)
        assert failed.value.rank == 1 and failed.value.call == "train_step"
        assert time.monotonic() - start < TIMEOUT_S  # rank 1's error, not rank 0's timeout
        # Rank 0 is not stuck forever: its all-reduce gives up at the timeout and it answers again.
        where = await asyncio.wait_for(group.ranks[0].placement.remote(), timeout=TIMEOUT_S + 60)
        assert where["rank"] == 0
    finally:
        group.shutdown()


@pytest.mark.parametrize("gpus", ["0.5", "1.5"])
def test_a_fraction_of_a_gpu_per_rank_is_refused_by_name(gpus: str) -> None:
    overrides = ["learner.device=cuda", "learner.num_learners=2", f"learner.gpus_per_learner={gpus}"]
    with pytest.raises(ConfigError, match=rf"--set learner.gpus_per_learner={gpus}: {gpus} is a fraction of a GPU"):
        load_config(None, overrides)
    load_config(None, [*overrides[:2], "learner.gpus_per_learner=1.0"])  # a whole GPU, however written


@pytest.mark.parametrize(
    "overrides",
    [
        ["learner.num_learners=4", "learner.shard_group_size=2"],  # ddp: nothing to shard
        ["learner.num_learners=4", "learner.strategy=fsdp", "learner.shard_group_size=3"],  # 4 ranks, groups of 3
    ],
    ids=["ddp", "not-a-divisor"],
)
def test_a_shard_group_that_cannot_be_is_refused(overrides: list[str]) -> None:
    with pytest.raises(ConfigError, match=r"learner.shard_group_size=\d needs learner.strategy=fsdp and a group size"):
        load_config(None, overrides)
