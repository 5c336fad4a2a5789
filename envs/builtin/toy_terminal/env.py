"""`ToyTerminalEnv`: one episode of the read-only pretend shell in `fs`, scored by `tasks`.

Pure CPU and microseconds per step, so it implements the async forms and runs on the
server's event loop; instances share only immutable module constants, so many sessions
can live in one server.
"""

from __future__ import annotations

import uuid

from pydantic import Field

from envs.authoring.base import Action, Environment, Observation, State
from envs.builtin.toy_terminal import fs
from envs.builtin.toy_terminal.tasks import ANSWER_PREFIX, SUITE, ToyTask
from hillclimb.errors import ExecutionError


class ToyTerminalAction(Action):
    command: str
    """One command line (`grep ERROR app.log`), or `answer: <value>` to end the episode."""


class ToyTerminalObservation(Observation):
    output: str = ""
    """What the command printed, stdout and stderr merged, byte-exact and deterministic."""
    prompt: str = ""
    """The task prompt on the reset observation; empty on every step."""


class ToyTerminalState(State):
    task_id: str | None = None
    """None until the first reset."""
    done: bool = False
    max_steps: int = Field(ge=1)


class ToyTerminalEnv(Environment[ToyTerminalAction, ToyTerminalObservation, ToyTerminalState]):
    """A deterministic read-only shell over five small files (app.log, server.log, config.yaml,
    users.csv, notes.txt) with ls, cat, grep, wc, head and tail.

    reset(task_id=...) poses a question; `answer: X` ends the episode with reward 1.0 if X
    is exactly the expected answer, else 0.0. Running out of steps ends it with reward 0.0.
    """

    SUPPORTS_CONCURRENT_SESSIONS = True

    def __init__(self, max_steps: int = 8) -> None:
        self.max_steps = max_steps
        self._task: ToyTask | None = None
        self._state = ToyTerminalState(max_steps=max_steps)

    async def reset_async(
        self, seed: int | None = None, episode_id: str | None = None, task_id: str | None = None
    ) -> ToyTerminalObservation:
        """Start an episode on `task_id`, or on a train task drawn by `seed` when none is named."""
        self._task = SUITE.pick(task_id, seed)
        self._state = ToyTerminalState(
            episode_id=episode_id or uuid.uuid4().hex, task_id=self._task.id, max_steps=self.max_steps
        )
        return ToyTerminalObservation(prompt=self._task.task.prompt, metadata={"task_id": self._task.id})

    async def step_async(self, action: ToyTerminalAction, timeout_s: float | None = None) -> ToyTerminalObservation:
        task = self._task
        if task is None or self._state.done:
            raise ExecutionError("no episode in progress: call reset() first")
        self._state.step_count += 1
        command = action.command.strip()
        if command.startswith(ANSWER_PREFIX):
            given = command[len(ANSWER_PREFIX) :].strip()
            return self._finish("", 1.0 if given == task.answer else 0.0, reason="answered")
        output = fs.execute(command)
        if self._state.step_count >= self.max_steps:
            return self._finish(output, 0.0, reason="max_steps")
        return ToyTerminalObservation(output=output)

    def _finish(self, output: str, reward: float, *, reason: str) -> ToyTerminalObservation:
        self._state.done = True
        return ToyTerminalObservation(output=output, done=True, reward=reward, metadata={"reason": reason})

    @property
    def state(self) -> ToyTerminalState:
        return self._state
