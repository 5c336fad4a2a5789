"""Every GPU has one owner, on a simulated cluster shaped like the chart's job mode
(`ray.cluster_utils.Cluster`, GPUs counted by Ray, none real): a CPU head, a learner node whose
2 GPUs come with the `learner_gpu` resource, and an engine node with 1 GPU. Once the learner
group has reserved its ranks' GPUs (what `Trainer.run` awaits before it starts the policy engine),
the ranks are on the learner node and a 1-GPU actor, as the engine is, can only go to the engine
node; before the reservation it could have taken a learner GPU and left a rank unplaceable."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from learner_data import CONFIG, MODEL

from orchestrator.learner_group import LearnerGroup

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture
def chart_shaped_cluster() -> Iterator[dict[str, str]]:
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0})
    learner = cluster.add_node(num_cpus=2, num_gpus=2, resources={"learner_gpu": 2})
    engine = cluster.add_node(num_cpus=1, num_gpus=1)
    ray.init(address=cluster.address, include_dashboard=False, logging_level="ERROR")
    cluster.wait_for_nodes()
    try:
        yield {"learner": learner.node_id, "engine": engine.node_id}
    finally:
        ray.shutdown()
        cluster.shutdown()


async def test_the_engine_gets_the_gpu_the_learners_left(chart_shaped_cluster: dict[str, str]) -> None:
    import ray

    # the chart's settings; the ranks compute on the CPU (a model_copy skips the check that
    # reserved GPUs come with device cuda: Ray's GPUs here are counts, not devices)
    ranks = CONFIG.model_copy(
        update={"num_learners": 2, "gpus_per_learner": 1.0, "resources_per_learner": {"learner_gpu": 1.0}}
    )

    @ray.remote(num_cpus=0, num_gpus=1)
    def gpu_task_node() -> Any:
        return ray.get_runtime_context().get_node_id()

    group = LearnerGroup(MODEL, ranks)
    try:
        await group.reserved()
        assert await gpu_task_node.remote() == chart_shaped_cluster["engine"]
        where = await group.placement()
        assert {p["node"] for p in where} == {chart_shaped_cluster["learner"]}
    finally:
        group.shutdown()
