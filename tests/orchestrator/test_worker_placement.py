"""Rollout workers spread over the nodes of a simulated three-node Ray cluster, each node's
worker with its own sandbox pool, and the groups run through them. The workers reserve half a
CPU each, so two would fit on a node: they land apart because they are spread."""

from __future__ import annotations

import pytest

from envs.authoring.registry import load_suite
from hillclimb.config import load_config
from orchestrator.driver import RolloutDriver
from orchestrator.schedule import round_of_groups

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _node_of(worker: object) -> str:
    import ray

    return ray.get(worker.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id()))  # type: ignore[attr-defined]


async def test_workers_spread_over_the_nodes(simulated_cluster: dict[str, str], tmp_path) -> None:
    config = load_config(
        "configs/rollout_toy.yaml",
        [
            "ray.num_workers=3",
            "ray.cpus_per_worker=0.5",
            f"run.dir={tmp_path}",
            "rollout.group_size=2",
            "eval.k=[1]",
            "rollout.concurrency=6",
        ],
    )
    driver = RolloutDriver(config)
    await driver.start()
    try:
        nodes = [_node_of(worker) for worker in driver.workers]
        assert len(set(nodes)) == 3, nodes  # one worker per node
        assert set(simulated_cluster) < set(nodes)
        groups = round_of_groups(load_suite("toy_terminal"), "heldout", run_seed=0, group_size=2, round_index=0)[:6]
        done: list[object] = []

        async def collect(group: object) -> None:
            done.append(group)

        await driver.run_groups(groups, collect)
        assert len(done) == 6
    finally:
        await driver.close()
