"""The objects tests build, one factory each: every field has a plain default, and a test passes
the fields it cares about by keyword (so what it asserts on stands in the test, not here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from envs.authoring.tasks import Task
from orchestrator.rollout import EpisodeSpec
from trainers.roles import Role
from trainers.trajectory import DoneReason, Trajectory, TrajectoryGroup

_ROLES = [Role.PROMPT, Role.SCAFFOLD, Role.ACTION, Role.ACTION, Role.ENV]


def trajectory(
    group_id: str = "g",
    sample: int = 0,
    *,
    run_id: str = "r",
    task_id: str = "t",
    env: str = "toy_terminal",
    split: str = "train",
    seed: int | None = None,
    version: int = 0,
    token_ids: list[int] | None = None,
    roles: list[int] | None = None,
    logprobs: list[float] | None = None,
    reward: float = 1.0,
    done: DoneReason = DoneReason.FINISHED,
    turns: int = 1,
    parse_errors: int = 0,
    metadata: dict[str, Any] | None = None,
) -> Trajectory:
    """Sample `sample` of group `group_id` (seeded by its index unless `seed` is given). Without
    token lists, five tokens with every trained role: a prompt, a scaffold token, two sampled action
    tokens (non-zero log-probs) and an observation token."""
    return Trajectory(
        run_id=run_id,
        group_id=group_id,
        sample_index=sample,
        task_id=task_id,
        env=env,
        split=split,
        seed=sample if seed is None else seed,
        policy_version=version,
        token_ids=[1, 2, 3, 4, 5] if token_ids is None else token_ids,
        roles=[int(r) for r in _ROLES] if roles is None else roles,
        logprobs=[0.0, 0.0, -0.25, -0.5, 0.0] if logprobs is None else logprobs,
        reward=reward,
        done_reason=done,
        turns=turns,
        parse_errors=parse_errors,
        metadata={} if metadata is None else metadata,
    )


def group(group_id: str, *, version: int = 0, size: int = 2, rewards: list[float] | None = None) -> TrajectoryGroup:
    """`size` default trajectories (or one per reward in `rewards`), each noting its place in its
    metadata, so that what reads a group back has metadata to keep."""
    rewards = rewards or [1.0] * size
    return TrajectoryGroup.of(
        [
            trajectory(group_id, i, version=version, reward=r, metadata={"note": f"{group_id}/{i}"})
            for i, r in enumerate(rewards)
        ]
    )


def episode_spec(
    task: Task,
    *,
    run_id: str = "t",
    env: str = "toy_terminal",
    group_id: str = "g",
    sample: int = 0,
    seed: int = 0,
) -> EpisodeSpec:
    """Sample `sample` of `task`, in the task's own split."""
    return EpisodeSpec(
        run_id=run_id, env=env, split=task.split, task=task, group_id=group_id, sample_index=sample, seed=seed
    )


_SAY_PACKAGE = """\
from pathlib import Path

from envs.authoring.base import Action, Observation
from envs.authoring.file_suite import FileSuite
from envs.authoring.packages import EnvPackage

class SayAction(Action):
    text: str

class SayObservation(Observation):
    text: str = ""

SUITE = FileSuite.from_file(
    Path(__file__).with_name("tasks.jsonl"), env="unsolved", action=SayAction, observation=SayObservation
)
ENVIRONMENT = EnvPackage(env="envs.builtin.toy_terminal:ToyTerminalEnv", suite=SUITE)
"""


def say_package(parent: Path, name: str, rows: list[dict[str, Any]]) -> Path:
    """The env package `name` (`name:ENVIRONMENT`, importable with `parent` on the path): a file
    suite of the task `rows` (an oracle in a row is optional), its actions and observations plain
    text, served by the toy terminal's environment."""
    package = parent / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(_SAY_PACKAGE)
    (package / "tasks.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return package
