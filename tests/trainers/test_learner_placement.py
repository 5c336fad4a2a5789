"""Learners on a cluster of several nodes: a simulated three-node Ray cluster on this machine
(`ray.cluster_utils.Cluster`; a custom resource stands in for the learner nodes' role).

The ranks land on the nodes that offer the role, one per node when spread; they meet at rank
0's node address; two ranks on two nodes make the same update as one rank on the batch; and
new weights go from rank 0's node to the policy engine's without a copy on the driver's."""

from __future__ import annotations

import pytest
import torch
from learner_data import CONFIG, MODEL, batch_of_step

from hillclimb.config.learner import LearnerConfig
from orchestrator.learner_group import LearnerGroup
from trainers.batching import deal

pytestmark = [pytest.mark.ray, pytest.mark.slow]


async def test_spread_ranks_land_on_the_learner_nodes_and_train_as_one(simulated_cluster: dict[str, str]) -> None:
    spread = CONFIG.model_copy(
        update={"num_learners": 2, "resources_per_learner": {"learner_node": 1}, "placement": "spread"}
    )
    one, two = LearnerGroup(MODEL, CONFIG), LearnerGroup(MODEL, spread)
    try:
        where = await two.placement()
        assert {p["node"] for p in where} == set(simulated_cluster)  # one rank on each learner node
        assert [p["device"] for p in where] == ["cpu", "cpu"]
        address = await two.ranks[0].rendezvous_address.remote()
        assert address.startswith(f"tcp://{where[0]['address']}:")  # rank 0's node, not loopback by rule
        for step in range(2):
            single = await one.train_step(deal(batch_of_step(step), one.world_size), step)
            double = await two.train_step(deal(batch_of_step(step), two.world_size), step)
            assert double["loss"] == pytest.approx(single["loss"], rel=1e-5)
        w1, w2 = await one.weights(), await two.weights()
        for name in w1:
            torch.testing.assert_close(w2[name], w1[name], rtol=1e-3, atol=1e-4)
    finally:
        one.shutdown()
        two.shutdown()


async def test_packed_ranks_share_a_node(simulated_cluster: dict[str, str]) -> None:
    packed = CONFIG.model_copy(update={"num_learners": 2, "resources_per_learner": {"learner_node": 0.5}})
    group = LearnerGroup(MODEL, packed)
    try:
        where = await group.placement()
        assert len({p["node"] for p in where}) == 1 and where[0]["node"] in simulated_cluster
    finally:
        group.shutdown()


async def test_ranks_the_cluster_cannot_hold_fail_with_what_is_free(
    simulated_cluster: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("orchestrator.learner_group._PLACEMENT_TIMEOUT_S", 3.0)
    greedy = CONFIG.model_copy(update={"num_learners": 3, "resources_per_learner": {"learner_node": 1}})
    group = LearnerGroup(MODEL, greedy)
    try:
        with pytest.raises(
            RuntimeError,
            match=r"no room for 3 learners of \{'learner_node': 1\} each \(pack\).*free now: .*'learner_node': 2",
        ):
            await group.weights()
    finally:
        group.shutdown()


async def test_new_weights_go_from_rank_0_to_the_policy_engine_without_the_driver(
    simulated_cluster: dict[str, str],
) -> None:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from hillclimb.config.policy import HFPolicyConfig
    from orchestrator.policy_server import PolicyServer

    # Wider than the other tests' model, in buckets over 100 KiB: Ray hands smaller results back
    # inline, through the caller (a real model's buckets go to the object store; its last may not).
    model = MODEL.model_copy(update={"hidden_size": 64, "intermediate_size": 128})
    group = LearnerGroup(model, CONFIG.model_copy(update={"resources_per_learner": {"learner_node": 1}}))
    try:
        rank_0_node = (await group.placement())[0]["node"]
        engine_node = next(node for node in simulated_cluster if node != rank_0_node)
        engine = (
            ray.remote(num_cpus=0)(PolicyServer)
            .options(scheduling_strategy=NodeAffinitySchedulingStrategy(engine_node, soft=False))
            .remote(HFPolicyConfig(model=model))
        )
        await group.train_step(deal(batch_of_step(0), group.world_size), 0)
        buckets = await group.weight_buckets(None, 128 * 1024)
        await engine.update_weights_in_buckets.remote(3, buckets)
        assert await engine.version.remote() == 3 and len(buckets) > 1
        held_on = ray.experimental.get_object_locations(buckets)
        big = [b for b in buckets if (held_on[b]["object_size"] or 0) >= 100 * 1024]  # the rest travel inline
        driver_node = ray.get_runtime_context().get_node_id()
        assert len(big) >= len(buckets) - 1  # a small last bucket at most
        assert all(rank_0_node in held_on[b]["node_ids"] and driver_node not in held_on[b]["node_ids"] for b in big)
        loaded = await engine.__ray_call__.remote(lambda server: server.policy._model.state_dict())
        trained = await group.weights()
        assert all(torch.equal(loaded[name], trained[name]) for name in trained)
    finally:
        group.shutdown()


def test_several_ranks_on_one_cuda_device_are_refused() -> None:
    with pytest.raises(ValueError, match="gpus_per_learner"):
        LearnerConfig(num_learners=2, device="cuda")
    with pytest.raises(ValueError, match="use cuda"):
        LearnerConfig(gpus_per_learner=1)
