"""A node of a simulated three-node Ray cluster removed mid-run (`Cluster.remove_node`, as a
preempted or scaled-down host): the rollout workers on it die with their sandboxes, the
driver starts replacements on the nodes left, their groups run again there, and the ledger
holds every group once, whole."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from envs.authoring.registry import load_suite
from hillclimb.config import load_config
from orchestrator.driver import RolloutDriver
from orchestrator.ledger import Ledger
from orchestrator.schedule import round_of_groups
from tests.orchestrator.helpers import SlowScriptedPolicy
from tests.simulated_cluster import three_node_cluster
from trainers.trajectory import TrajectoryGroup

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[Any, dict[str, Any]]]:
    with three_node_cluster() as nodes:  # its own: this module takes a node away
        yield nodes


def _node_of(worker: Any) -> str:
    import ray

    return ray.get(worker.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id()))


async def test_a_removed_nodes_groups_run_again_elsewhere_and_land_once(
    cluster: tuple[Any, dict[str, Any]], tmp_path
) -> None:
    simulated, role_nodes = cluster
    config = load_config(
        "configs/rollout_toy.yaml",
        [
            "ray.num_workers=3",
            "ray.cpus_per_worker=0.5",  # three nodes' worth spread; two nodes still hold all three
            f"run.dir={tmp_path}",
            "rollout.group_size=2",
            "rollout.concurrency=6",
            "eval.k=[1]",
        ],
    )
    groups = round_of_groups(load_suite("toy_terminal"), "train", run_seed=0, group_size=2, round_index=0)[:16]
    ledger = Ledger(tmp_path / "ledger")
    driver = RolloutDriver(config, policy=SlowScriptedPolicy(0.2))
    await driver.start()
    removed: list[str] = []

    def record(group: TrajectoryGroup) -> None:
        ledger.append(group)
        if len(ledger.group_ids()) == 2:  # mid-run, groups in flight on every worker
            doomed = next(node for node in map(_node_of, driver.workers) if node in role_nodes)
            simulated.remove_node(role_nodes[doomed])
            removed.append(doomed)

    try:
        await driver.run_groups(groups, record)
        survivors = {_node_of(worker) for worker in driver.workers}
    finally:
        await driver.close()
    assert removed and driver.worker_restarts >= 1
    assert removed[0] not in survivors and len(driver.workers) == 3
    assert ledger.group_ids() == {g.group_id for g in groups}  # none lost
    for group in groups:  # none doubled, none partial: each group's file holds its members once
        stored = ledger.read_group(group.group_id).trajectories
        assert sorted(t.sample_index for t in stored) == [0, 1], group.group_id
