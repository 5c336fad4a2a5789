"""Publishing weights to policy engines: every data-parallel engine loads every publish and serves
its share of the episodes, a step trains while engines load, a hung engine is named."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import torch

from hillclimb.config.policy import HFPolicyConfig, PublishConfig, ScriptedPolicyConfig
from hillclimb.config.rollout import SamplingParams
from orchestrator.learner_group import LearnerGroup
from orchestrator.policy_server import PolicyServer, start_policy_servers
from orchestrator.weight_sync import WeightPublisher
from orchestrator.workers import PolicyServerClient
from tests.orchestrator.helpers import GatedPolicyServer, HungPolicyServer
from tests.trainers.learner_data import CONFIG, MODEL, batch_of_step
from trainers.batching import deal
from trainers.policy.base import EpisodeInfo, GenerateRequest
from trainers.policy.errors import WeightPublishTimeoutError
from trainers.tokenizer import ByteTokenizer

pytestmark = pytest.mark.ray

SMALL_BUCKETS = PublishConfig(bucket_mb=4096 / 2**20)  # 4 KiB: the tiny model goes in several


@pytest.fixture(scope="module")
def group(ray_local: None) -> Any:
    learners = LearnerGroup(MODEL, CONFIG)
    yield learners
    learners.shutdown()


async def _train(group: LearnerGroup, step: int) -> None:
    await group.train_step(deal(batch_of_step(step), group.world_size), step)


# Run inside the engines' processes (lambdas: Ray pickles them by value, not by this module's name).
_loaded = lambda server: server.policy._model.state_dict()  # noqa: E731
_served = lambda server: sum(size * count for size, count in server.policy.batch_sizes.items())  # noqa: E731


async def test_two_engines_each_load_every_publish_and_share_the_episodes(group: LearnerGroup) -> None:
    import ray

    config = HFPolicyConfig(model=MODEL, engines=2, publish=SMALL_BUCKETS)
    engines = start_policy_servers(config)
    try:
        assert len(engines) == 2
        publisher = WeightPublisher(engines, config.publish)
        await publisher.prepare(group)
        await _train(group, 0)
        await publisher.publish(group, 1)
        trained = await group.weights()
        for engine in engines:
            assert await engine.version.remote() == 1
            loaded = await engine.__ray_call__.remote(_loaded)
            assert all(torch.equal(loaded[name], trained[name]) for name in trained)

        client = PolicyServerClient(engines, ByteTokenizer())
        requests = [
            GenerateRequest(prompt_ids=(65, 66), episode=EpisodeInfo("toy", f"t{i}", 0, seed=i)) for i in range(8)
        ]
        routed = [client._engine_of(r) for r in requests]
        assert routed == [client._engine_of(r) for r in requests] and set(routed) == {0, 1}  # by episode, both
        sampling = SamplingParams(max_new_tokens=2, temperature=0.0)
        generations = await asyncio.gather(*(client.generate([r], sampling) for r in requests))
        assert [g.version for (g,) in generations] == [1] * 8
        assert [await e.__ray_call__.remote(_served) for e in engines] == [routed.count(0), routed.count(1)]
    finally:
        for engine in engines:
            ray.kill(engine)


async def test_the_next_step_trains_while_an_engine_loads_the_last_one(group: LearnerGroup, tmp_path: Path) -> None:
    import ray

    gate = tmp_path / "gate"
    engine = ray.remote(num_cpus=0)(GatedPolicyServer).remote(HFPolicyConfig(model=MODEL), gate)
    try:
        publisher = WeightPublisher([engine], SMALL_BUCKETS)
        await publisher.prepare(group)
        await _train(group, 1)
        published = await group.weights()
        delivery = asyncio.ensure_future(publisher.publish(group, 2))
        await _train(group, 2)  # the learners go on while the engine has not loaded a thing
        assert not delivery.done()
        after = await group.weights()
        assert not all(torch.equal(after[name], published[name]) for name in published)
        gate.touch()
        await delivery
        loaded = await engine.__ray_call__.remote(_loaded)
        assert all(torch.equal(loaded[name], published[name]) for name in published)  # the weights as published
    finally:
        ray.kill(engine)


async def test_a_hung_engine_is_named_when_the_publish_times_out(group: LearnerGroup) -> None:
    import pickle

    import ray

    engines = [
        ray.remote(num_cpus=0)(PolicyServer).remote(ScriptedPolicyConfig()),
        ray.remote(num_cpus=0)(HungPolicyServer).remote(),
    ]
    try:
        # long enough for the answering engine on a loaded host (at 3 s both were late there)
        publisher = WeightPublisher(engines, PublishConfig(timeout_s=20.0))
        await publisher.prepare(group)
        assert await engines[0].version.remote() == 0  # started: the time limit is the load's alone
        with pytest.raises(WeightPublishTimeoutError, match=r"policy engine 1 \(of 2; late: \[1\]\)") as info:
            await publisher.publish(group, 5)
        assert (info.value.engine, info.value.version, info.value.timeout_s) == (1, 5, 20.0)
        assert isinstance(info.value, TimeoutError) and pickle.loads(pickle.dumps(info.value)).engine == 1
        assert await engines[0].version.remote() == 5  # the engine that answered has the weights
    finally:
        for engine in engines:
            ray.kill(engine)
