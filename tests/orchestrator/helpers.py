"""Small builders for trajectories and groups in orchestrator tests."""

from __future__ import annotations

import asyncio

from trainers.policy.base import GenerateRequest, Generation, SamplingParams
from trainers.policy.scripted import ScriptedPolicy
from trainers.roles import Role
from trainers.trajectory import DoneReason, Trajectory, TrajectoryGroup


def trajectory(
    group_id: str,
    sample: int = 0,
    *,
    version: int = 0,
    reward: float = 1.0,
    split: str = "train",
    task_id: str = "t1",
    done: DoneReason = DoneReason.FINISHED,
) -> Trajectory:
    ids = [1, 2, 3, 4, 5]
    roles = [Role.PROMPT, Role.SCAFFOLD, Role.ACTION, Role.ACTION, Role.ENV]
    return Trajectory(
        run_id="r",
        group_id=group_id,
        sample_index=sample,
        task_id=task_id,
        env="toy_terminal",
        split=split,
        seed=sample,
        policy_version=version,
        token_ids=ids,
        roles=[int(r) for r in roles],
        logprobs=[0.0, 0.0, -0.25, -0.5, 0.0],
        reward=reward,
        done_reason=done,
        turns=1,
        metadata={"note": f"{group_id}/{sample}"},
    )


def group(group_id: str, *, version: int = 0, size: int = 2, rewards: list[float] | None = None) -> TrajectoryGroup:
    rewards = rewards or [1.0] * size
    return TrajectoryGroup.of([trajectory(group_id, i, version=version, reward=r) for i, r in enumerate(rewards)])


class SlowScriptedPolicy(ScriptedPolicy):
    """The oracle, taking `delay_s` per turn: keeps episodes in flight long enough to kill things."""

    def __init__(self, delay_s: float) -> None:
        super().__init__()
        self.delay_s = delay_s

    async def generate(self, requests: list[GenerateRequest], sampling: SamplingParams) -> list[Generation]:
        await asyncio.sleep(self.delay_s)
        return await super().generate(requests, sampling)
