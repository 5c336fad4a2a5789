"""Rollouts fanned out over real Ray workers and real local sandboxes, with workers killed on purpose."""

from __future__ import annotations

import asyncio

import pytest

from envs.authoring.registry import load_suite
from hillclimb.config import load_config
from orchestrator.driver import RolloutDriver
from orchestrator.schedule import endless_groups, round_of_groups
from tests.orchestrator.helpers import SlowScriptedPolicy
from trainers.trajectory import DoneReason, TrajectoryGroup

pytestmark = [
    pytest.mark.ray,
    pytest.mark.root,
]


def _config(tmp_path, **overrides):  # type: ignore[no-untyped-def]
    items = {
        "run.dir": str(tmp_path),
        "ray.num_workers": 2,
        "rollout.group_size": 2,
        "rollout.concurrency": 8,
        **overrides,
    }
    return load_config(None, [f"{k}={v}" for k, v in items.items()])


async def test_groups_fan_out_over_workers_and_all_come_back(ray_local: None, tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = _config(tmp_path)
    groups = round_of_groups(load_suite("toy_terminal"), "heldout", run_seed=0, group_size=2, round_index=0)
    results: list[TrajectoryGroup] = []
    driver = RolloutDriver(config)
    await driver.start()
    try:
        await driver.run_groups(groups, results.append)
    finally:
        await driver.close()
    assert sorted(g.group_id for g in results) == sorted(g.group_id for g in groups)
    trajectories = [t for g in results for t in g.trajectories]
    assert len(trajectories) == 2 * len(groups)
    assert all(t.done_reason is DoneReason.FINISHED and t.reward == 1.0 for t in trajectories)


async def test_a_killed_worker_is_replaced_and_no_group_is_lost(ray_local: None, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import ray

    config = _config(tmp_path, **{"rollout.concurrency": 4})
    groups = round_of_groups(load_suite("toy_terminal"), "train", run_seed=0, group_size=2, round_index=0)
    results: list[TrajectoryGroup] = []
    driver = RolloutDriver(config, policy=SlowScriptedPolicy(0.05))
    await driver.start()

    def on_group(group: TrajectoryGroup) -> None:
        results.append(group)
        if len(results) == 2:  # mid-run, with groups in flight on both workers
            ray.kill(driver.workers[0])

    try:
        await driver.run_groups(groups, on_group)
    finally:
        await driver.close()
    assert driver.worker_restarts == 1
    assert sorted(g.group_id for g in results) == sorted(g.group_id for g in groups)  # none lost, none twice
    assert all(t.done_reason is DoneReason.FINISHED for g in results for t in g.trajectories)


@pytest.mark.timeout(600)
async def test_stopping_a_run_cancels_its_groups_on_the_workers(ray_local: None, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Stopping the driver's loop (a time budget, Ctrl-C) must stop the groups on the workers too,
    # not leave them running on to completion, holding sandboxes, until the workers close.
    config = _config(tmp_path)
    groups = endless_groups(load_suite("toy_terminal"), "train", run_seed=0, group_size=2)
    # A group would take ten minutes: far past the generous drain bound below, so "cancelled" stays
    # apart from "ran to completion".
    driver = RolloutDriver(config, policy=SlowScriptedPolicy(300.0))
    await driver.start()
    try:
        runner = asyncio.ensure_future(driver.run_groups(groups, lambda g: None))

        async def running() -> list[int]:
            return list(await asyncio.gather(*(w.running.remote() for w in driver.workers)))

        async with asyncio.timeout(240):  # a hang guard: on a loaded host, starting the Ray actors alone takes ~45 s
            while sum(await running()) < 4:  # concurrency 8 / group size 2: 4 groups in flight
                await asyncio.sleep(0.05)
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        async with asyncio.timeout(60):
            while sum(await running()) > 0:
                await asyncio.sleep(0.05)
    finally:
        await driver.close()


async def test_workers_ask_ray_for_the_configured_resources(ray_local: None, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """On the chart's cluster, `{rollout_worker: 1}` keeps workers on the pods sandboxes admit;
    here the head node's own resource stands in for it."""
    import ray

    config = _config(tmp_path, **{"ray.num_workers": 1, "ray.worker_resources": "{'node:__internal_head__': 0.01}"})
    driver = RolloutDriver(config)
    await driver.start()
    try:
        assigned = await driver.workers[0].__ray_call__.remote(
            lambda _: ray.get_runtime_context().get_assigned_resources()
        )
    finally:
        await driver.close()
    assert assigned == {"node:__internal_head__": 0.01}
