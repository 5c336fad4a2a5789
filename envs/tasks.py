"""Task suites: the tasks of an environment, their splits, and how text maps to actions.

A policy emits text and reads text; an environment takes action dicts and returns
observation dicts. A `TaskSuite` is the bridge for one environment: it lists tasks
(with an oracle solution each, for the scripted policy and for teacher-forced
evaluation), parses a policy's text into an action, and renders an observation as the
text the policy sees next. Suites are registered by environment name.
"""

from __future__ import annotations

import importlib
import random
from collections.abc import Sequence
from typing import Any, Generic, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from envs.errors import TargetNotFoundError, ValidationError

Split = Literal["train", "heldout"]


class Task(BaseModel):
    """One task: what the agent is asked, and a sequence of actions that solves it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    """Unique within its suite; passed to `reset(task_id=...)`."""
    split: Split
    prompt: str
    """The instruction the agent reads first."""
    oracle: tuple[str, ...] = Field(min_length=1)
    """Action texts, in order, that solve the task (what a perfect policy would emit)."""


class TaskRecord(Protocol):
    """An environment's own task type: whatever it needs to score, plus the generic `Task`."""

    @property
    def id(self) -> str: ...

    @property
    def split(self) -> Split: ...

    @property
    def task(self) -> Task: ...


RecordT = TypeVar("RecordT", bound=TaskRecord)


class TaskBook(Generic[RecordT]):
    """An environment's task records by id: its splits as `Task`s, and the record a reset names."""

    def __init__(self, env: str, records: Sequence[RecordT]) -> None:
        self.env = env
        self._by_id = {r.id: r for r in records}
        if len(self._by_id) != len(records):
            raise ValueError(f"{env} task ids must be unique")

    def tasks(self, split: Split) -> list[Task]:
        return [r.task for r in self._by_id.values() if r.split == split]

    def pick(self, task_id: str | None, seed: int | None) -> RecordT:
        """The record named `task_id`, else one drawn from the train split by `seed`."""
        if task_id is None:
            return random.Random(seed).choice([r for r in self._by_id.values() if r.split == "train"])
        if task_id not in self._by_id:
            known = sorted(self._by_id)
            raise ValidationError(f"unknown {self.env} task_id {task_id!r}; known: {known}", errors=[])
        return self._by_id[task_id]


class ActionParseError(ValueError):
    """A policy's text is not a valid action; the message is shown back to the policy."""


class TaskSuite(Protocol):
    env: str
    """The registered environment name these tasks run on."""

    def tasks(self, split: Split) -> list[Task]: ...

    def parse_action(self, text: str) -> dict[str, Any]:
        """The action dict for a policy's text; raises `ActionParseError` if it is not one."""
        ...

    def render_observation(self, observation: dict[str, Any]) -> str:
        """The text the policy sees for an observation (the environment's own output)."""
        ...


TASK_SUITES: dict[str, str] = {
    "toy_terminal": "envs.toy_terminal.tasks:SUITE",
    "terminal": "envs.terminal.tasks:SUITE",
    "inventory": "envs.inventory.tasks:SUITE",
}


def load_suite(env: str) -> TaskSuite:
    path = TASK_SUITES.get(env)
    if path is None:
        raise TargetNotFoundError(f"no task suite for environment {env!r}; suites exist for {sorted(TASK_SUITES)}")
    module_name, _, attr = path.partition(":")
    return getattr(importlib.import_module(module_name), attr)
