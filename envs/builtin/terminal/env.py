"""`TerminalEnv`: a real bash in a fresh per-episode directory, scored by the task's verifier.

    reset(task_id=...)  -> a new work dir under $HILLCLIMB_WORKDIR (else the current
                           directory), made by the agent's uid with the task's files, the prompt
    step({"command": c}) -> `bash -c c` there (see `shell`): output, exit code
    step({"command": "submit"}) -> the verifier runs; reward 1.0 if it exits 0, else 0.0

A fresh `bash -c` per command, rather than one long-lived shell, keeps every step
independent and robust: no prompt parsing, no sentinel echoes, no shell left in a
half-read state after a timeout. The cost is that `cd` and variables do not persist
between commands, which the prompt says. One world per sandbox: the work dir and the
processes it spawns belong to the sandbox, so sessions are not concurrent.

Everything the agent does runs as the agent (see `envs.sandbox.warden`), and nothing it starts
outlives its command. The verifier runs out of its reach (`envs.sandbox.verification`): every agent
process ended first, on a copy of the work dir made with the agent's own rights (so a link
it planted leads nowhere it could not read itself), under a uid of its own.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
import uuid

from pydantic import Field

from envs.authoring.base import Action, Environment, Observation, State
from envs.builtin.terminal.shell import run_command
from envs.builtin.terminal.tasks import SUBMIT, SUITE, TerminalTask
from envs.sandbox.agent_commands import WardenGoneError, agent_commands
from envs.sandbox.run_as import CommandResult, command_environment, run_as
from envs.sandbox.verification import run_verifier
from hillclimb.errors import ExecutionError

WORKDIR_ENV_VAR = "HILLCLIMB_WORKDIR"
_VERIFIER_TIMEOUT_S = 30.0
_SETUP_TIMEOUT_S = 30.0
_UNPACK = (
    "sh",
    "-c",
    'mkdir -p -- "${1%/*}" && mkdir -m 0700 -- "$1" && exec tar -x --no-same-owner -p -C "$1" -f -',
    "sh",
)
# A directory the agent made unreadable must still go: as its owner, make it readable first.
_REMOVE = ("sh", "-c", 'chmod -R u+rwx -- "$1" 2>/dev/null; exec rm -rf -- "$1"', "sh")


class TerminalAction(Action):
    command: str
    """A bash command line (several lines are fine), or `submit` to end the episode."""


class TerminalObservation(Observation):
    output: str = ""
    """stdout and stderr merged, capped, with `[...]` notes for truncation and timeouts."""
    exit_code: int | None = None
    """The command's exit status; None on reset, on submit and when the command timed out."""
    prompt: str = ""
    """The task prompt on the reset observation; empty on every step."""


class TerminalState(State):
    task_id: str | None = None
    """None until the first reset."""
    done: bool = False
    workdir: str | None = None
    """The episode's directory, where every command runs."""
    max_steps: int = Field(ge=1)


class TerminalEnv(Environment[TerminalAction, TerminalObservation, TerminalState]):
    """A real bash shell in a fresh directory per episode, for file and text manipulation tasks.

    Each command runs in a new `bash -c` in the episode directory with a time limit and an
    output cap. `submit` runs the task's verifier: reward 1.0 if it passes, else 0.0.
    """

    SUPPORTS_CONCURRENT_SESSIONS = False

    def __init__(
        self, max_steps: int = 30, command_timeout_s: float = 10.0, output_limit_bytes: int = 16 * 1024
    ) -> None:
        self.max_steps = max_steps
        self.command_timeout_s = command_timeout_s
        self.output_limit_bytes = output_limit_bytes
        self._task: TerminalTask | None = None
        self._state = TerminalState(max_steps=max_steps)

    async def reset_async(
        self, seed: int | None = None, episode_id: str | None = None, task_id: str | None = None
    ) -> TerminalObservation:
        """Start an episode on `task_id`, or on a train task drawn by `seed` when none is named."""
        task = SUITE.pick(task_id, seed)
        self._task = None
        if self._state.workdir is not None:
            await run_as("agent", [*_REMOVE, self._state.workdir], "/", timeout_s=_SETUP_TIMEOUT_S, output_limit=4096)
            self._state.workdir = None
        workdir = await _make_workdir(task)
        self._task = task
        self._state = TerminalState(
            episode_id=episode_id or uuid.uuid4().hex, task_id=task.id, workdir=str(workdir), max_steps=self.max_steps
        )
        return TerminalObservation(prompt=task.task.prompt, metadata={"task_id": task.id})

    async def step_async(self, action: TerminalAction, timeout_s: float | None = None) -> TerminalObservation:
        """Run one command; `timeout_s`, when given, replaces the default per-command limit."""
        if self._task is None or self._state.done or self._state.workdir is None:
            raise ExecutionError("no episode in progress: call reset() first")
        self._state.step_count += 1
        if action.command.strip() == SUBMIT:
            return await self._submit(self._task)
        result = await self._run(action.command, timeout_s or self.command_timeout_s)
        out_of_steps = self._state.done = self._state.step_count >= self.max_steps
        return TerminalObservation(
            output=result.output,
            exit_code=result.exit_code,
            done=out_of_steps,
            reward=0.0 if out_of_steps else None,
            metadata={"reason": "max_steps"} if out_of_steps else {},
        )

    async def _run(self, command: str, timeout_s: float) -> CommandResult:
        workdir = self._state.workdir
        assert workdir is not None
        return await run_command(command, workdir, timeout_s=timeout_s, output_limit=self.output_limit_bytes)

    async def _submit(self, task: TerminalTask) -> TerminalObservation:
        workdir = self._state.workdir
        assert workdir is not None
        # A more generous limit for the verifier: it is trusted, and a slow machine must not fail a solved task.
        verdict = await run_verifier(
            task.verifier_script,
            workdir,
            timeout_s=max(_VERIFIER_TIMEOUT_S, self.command_timeout_s),
            output_limit=self.output_limit_bytes,
        )
        self._state.done = True
        passed = verdict.exit_code == 0
        metadata = {"reason": "submitted", "verifier_exit_code": verdict.exit_code, "verifier_output": verdict.output}
        return TerminalObservation(done=True, reward=1.0 if passed else 0.0, metadata=metadata)

    @property
    def state(self) -> TerminalState:
        return self._state

    def close(self) -> None:
        if self._state.workdir is not None:
            with contextlib.suppress(WardenGoneError):  # the sandbox is going: so is its work dir
                agent_commands().detach([*_REMOVE, self._state.workdir], cwd="/", env=command_environment("/"))
            self._state.workdir = None


async def _make_workdir(task: TerminalTask) -> str:
    """A fresh directory holding the task's files, made and owned by the agent's uid."""
    base = os.environ.get(WORKDIR_ENV_VAR) or os.getcwd()
    workdir = os.path.join(base, f"episode-{task.id}-{secrets.token_hex(4)}")
    with tempfile.TemporaryFile() as archive:  # a descriptor the agent's tar reads, whatever it may open
        archive.write(task.archive())
        archive.seek(0)
        result = await run_as(
            "agent", [*_UNPACK, workdir], "/", timeout_s=_SETUP_TIMEOUT_S, output_limit=4096, stdin_fd=archive.fileno()
        )
    if result.exit_code != 0:
        raise ExecutionError(f"could not set up task {task.id} in {workdir}: {result.output.strip()}")
    return workdir
