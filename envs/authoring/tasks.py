"""Task suites: the tasks of an environment, their splits, and how text maps to actions.

A policy emits text and reads text; an environment takes action dicts and returns
observation dicts. A `TaskSuite` is the bridge for one environment: it lists tasks
(each may carry an oracle solution, for the scripted policy, the warm-up and
teacher-forced evaluation), parses a policy's text into an action, and renders an
observation as the text the policy sees next. An environment's name finds its suite
through `envs.authoring.registry.load_suite`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ConfigDict

from hillclimb.errors import HillclimbError, MessageValidationError
from hillclimb.splits import Split


class Task(BaseModel):
    """One task: what the agent is asked, and optionally a sequence of actions that solves it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    """Unique within its suite; passed to `reset(task_id=...)`."""
    split: Split
    prompt: str
    """The instruction the agent reads first."""
    oracle: tuple[str, ...] = ()
    """Action texts, in order, that solve the task (what a perfect policy would emit); empty when
    unknown — only the scripted policy, the warm-up and self-checks need them (`require_oracles`)."""


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
            raise MessageValidationError(f"unknown {self.env} task_id {task_id!r}; known: {known}", errors=[])
        return self._by_id[task_id]


class ActionParseError(ValueError):
    """A policy's text is not a valid action; the message is shown back to the policy."""


class TaskSuite(Protocol):
    env: str
    """The name the environment is found by (`envs.authoring.registry`): groups carry it, and the scripted
    policy looks the suite up again by it."""

    def tasks(self, split: Split) -> list[Task]: ...

    def parse_action(self, text: str) -> dict[str, Any]:
        """The action dict for a policy's text; raises `ActionParseError` if it is not one."""
        ...

    def render_observation(self, observation: dict[str, Any]) -> str:
        """The text the policy sees for an observation (the environment's own output)."""
        ...


@runtime_checkable
class ToolCallSuite(TaskSuite, Protocol):
    """A suite whose environment has MCP tools a chat model may call natively (`tools` in the
    request, `tool_calls` in the reply): each call becomes the action text `parse_action` reads."""

    def tool_call_text(self, name: str, arguments: str) -> str:
        """The action text for a call of tool `name` with `arguments` (JSON text, as written)."""
        ...


@runtime_checkable
class ShellSuite(TaskSuite, Protocol):
    """A suite whose environment is a shell: its actions are drawn after a prompt, as a terminal
    shows commands. Other environments' actions get none (a `$ ` before `guess: river` says
    something false about the environment to the model and to whoever reads the episode)."""

    shell_prompt: str
    """What precedes each command, such as `$ `."""


def action_prompt(suite: TaskSuite) -> str:
    """What precedes an action in a plain-text transcript: the shell's prompt, or nothing."""
    return suite.shell_prompt if isinstance(suite, ShellSuite) else ""


class MissingOracleError(HillclimbError, ValueError):
    """Something that replays oracle actions met tasks that have none."""


def every_task(suite: TaskSuite) -> list[Task]:
    """The suite's tasks, train split then held-out."""
    return [*suite.tasks("train"), *suite.tasks("heldout")]


def require_oracles(tasks: Sequence[Task], purpose: str, fix: str) -> None:
    """Raise `MissingOracleError` naming the tasks without oracle actions, what needed them and the fix."""
    missing = [t.id for t in tasks if not t.oracle]
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise MissingOracleError(
            f"{purpose} replays each task's oracle actions, and {len(missing)} task(s) have none: {shown}. "
            f"Give them an `oracle` (a list of action texts that solve the task), or {fix}",
            tasks=missing,
        )
