"""A RolloutWorker in-process (no Ray) on real local sandboxes: closing it mid-group; the oracle playing on its pool."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from envs.authoring.registry import load_suite
from hillclimb.config import load_config
from hillclimb.config.rollout import SamplingParams
from orchestrator.schedule import round_of_groups
from orchestrator.workers import RolloutWorker, WorkerClosedError
from tests.orchestrator.helpers import SlowScriptedPolicy
from trainers.policy.base import GenerateRequest, Generation
from trainers.policy.scripted import ScriptedPolicy
from trainers.tokenizer import ByteTokenizer
from trainers.trajectory import TrajectoryGroup

pytestmark = pytest.mark.root


async def test_closing_a_worker_cancels_its_groups_before_their_sandboxes(
    sandbox_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = load_config(
        None, [f"run.dir={tmp_path}", "rollout.group_size=2", f"provider.options={{root: {sandbox_root}}}"]
    )
    worker = RolloutWorker(config, worker_index=0, policy=SlowScriptedPolicy(0.2))
    group = round_of_groups(load_suite("toy_terminal"), "train", run_seed=0, group_size=2, round_index=0)[0]
    running = asyncio.ensure_future(worker.run_group(group))
    async with asyncio.timeout(30):
        while worker._pool is None or worker._pool.leased < 2:  # both episodes hold a sandbox session
            await asyncio.sleep(0.01)
    with caplog.at_level(logging.WARNING, logger="hillclimb"):
        await worker.close()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert [r.getMessage() for r in caplog.records if "sandbox failed" in r.getMessage()] == []
    assert worker._pool.leased == 0


async def test_a_group_that_arrives_while_closing_is_refused_before_it_takes_a_sandbox(
    sandbox_root: Path, tmp_path: Path
) -> None:
    # A Ray call queued before close() runs after it: starting it would lose its sandboxes mid-episode.
    config = load_config(None, [f"run.dir={tmp_path}", f"provider.options={{root: {sandbox_root}}}"])
    worker = RolloutWorker(config, worker_index=3, policy=SlowScriptedPolicy(0.0))
    group = round_of_groups(load_suite("toy_terminal"), "train", run_seed=0, group_size=2, round_index=0)[0]
    await worker.close()
    with pytest.raises(WorkerClosedError, match=f"rollout worker 3 is closing; group {group.group_id} not started"):
        await worker.run_group(group)
    assert worker._pool is None and worker.running() == 0  # no pool was built, no sandbox started


class _SilentPolicy(ScriptedPolicy):
    """A policy that says nothing: an episode it played would end unsolved."""

    async def generate(self, requests: list[GenerateRequest], sampling: SamplingParams) -> list[Generation]:
        return [Generation(token_ids=(), logprobs=(), finish_reason="stop", version=0) for _ in requests]


async def test_the_oracle_plays_a_group_on_the_workers_pool_in_the_policys_tokens(
    sandbox_root: Path, tmp_path: Path
) -> None:
    config = load_config(None, [f"run.dir={tmp_path}", f"provider.options={{root: {sandbox_root}}}"])
    tokenizer = ByteTokenizer()
    worker = RolloutWorker(config, worker_index=0, policy=_SilentPolicy(tokenizer))
    group = round_of_groups(load_suite("toy_terminal"), "train", run_seed=0, group_size=2, round_index=0)[0]
    try:
        by_policy = await worker.run_group(group)
        by_oracle = await worker.run_group(group, oracle=True)
        assert isinstance(by_policy, TrajectoryGroup) and isinstance(by_oracle, TrajectoryGroup)
        assert [t.reward > 0 for t in by_policy.trajectories] == [False, False]
        assert [t.reward > 0 for t in by_oracle.trajectories] == [True, True]
        assert worker._oracle is not None and worker._oracle.pool is worker._pool  # one pool, one set of sandboxes
        assert worker._oracle.policy.tokenizer is tokenizer
    finally:
        await worker.close()
