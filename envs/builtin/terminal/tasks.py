"""The terminal task suite: file and text chores in a real bash, checked by a verifier script.

Tasks are data (`tasks.yaml`, validated here into `TerminalTask`): the files to create,
the prompt, a bash verifier that is the rubric (run in the work dir after `submit`;
exit 0 means solved) and an oracle. This module also maps a policy's text to an action
(the whole text is the command; a ```bash fence is unwrapped) and renders observations.
"""

from __future__ import annotations

import io
import re
import tarfile
import time
from functools import cached_property
from importlib import resources
from pathlib import PurePosixPath
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, field_validator

from envs.authoring.tasks import ActionParseError, Task, TaskBook
from hillclimb.splits import Split

SUBMIT = "submit"

PREAMBLE = (
    "You are in a bash shell in a task directory. Send one command per turn; each runs in a fresh "
    "`bash -c` in that directory (so `cd` and variables do not carry over: chain with `&&` or `;`), and "
    f"long-running commands are killed. When the task is done, send `{SUBMIT}` on its own."
)

_FENCE = re.compile(r"\A```(?:bash|sh|shell)?[ \t]*\n(?P<body>.*?)\n?```\Z", re.DOTALL)


def _octal(value: Any) -> Any:
    return int(value, 8) if isinstance(value, str) else value


Mode = Annotated[int, BeforeValidator(_octal), Field(ge=0, le=0o7777)]
"""A permission mode; YAML writes it as an octal string ("0644")."""


class TerminalTask(BaseModel):
    """One task: its setup, its prompt, its verifier (the rubric) and a solution."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    split: Split
    prompt: str
    files: dict[str, str] = Field(default_factory=dict)
    """Relative path -> content, created (with parent directories) at reset."""
    dirs: tuple[str, ...] = ()
    """Extra directories to create, for a setup that needs an empty one."""
    modes: dict[str, Mode] = Field(default_factory=dict)
    """Relative path -> permission bits, applied after files and dirs exist."""
    verify: str
    """Bash run with `set -euo pipefail` in the work dir after submit; exit 0 = pass."""
    oracle: tuple[str, ...] = Field(min_length=1)
    """Commands that solve the task; `submit` is appended in `task`."""

    @field_validator("files", "modes")
    @classmethod
    def _relative_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        for path in value:
            _check_relative(path)
        return value

    @field_validator("dirs")
    @classmethod
    def _relative_dirs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for path in value:
            _check_relative(path)
        return value

    @cached_property
    def task(self) -> Task:
        prompt = f"{PREAMBLE}\n\nTask: {self.prompt}"
        return Task(id=self.id, split=self.split, prompt=prompt, oracle=(*self.oracle, SUBMIT))

    @property
    def verifier_script(self) -> str:
        return f"set -euo pipefail\n{self.verify}"

    def archive(self) -> bytes:
        """The task's initial files as a tar archive, to be unpacked by the agent's own uid
        (the server cannot write into the agent's directories, and should not)."""
        modes = dict(self.modes)
        dirs = {str(parent) for rel in self.files for parent in PurePosixPath(rel).parents if str(parent) != "."}
        dirs |= set(self.dirs) | {rel for rel in modes if rel not in self.files}
        buffer, now = io.BytesIO(), time.time()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for rel in sorted(dirs, key=lambda d: d.count("/")):
                tar.addfile(_entry(rel, tarfile.DIRTYPE, modes.get(rel, 0o755), now))
            for rel, content in self.files.items():
                data = content.encode()
                info = _entry(rel, tarfile.REGTYPE, modes.get(rel, 0o644), now)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return buffer.getvalue()


def _entry(name: str, kind: bytes, mode: int, mtime: float) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = kind, mode, mtime
    return info


def _check_relative(path: str) -> None:
    parts = PurePosixPath(path).parts
    if not parts or PurePosixPath(path).is_absolute() or ".." in parts:
        raise ValueError(f"task paths must be relative and stay inside the work dir, got {path!r}")


def load_tasks() -> tuple[TerminalTask, ...]:
    text = resources.files("envs.builtin.terminal").joinpath("tasks.yaml").read_text()
    return TypeAdapter(tuple[TerminalTask, ...]).validate_python(yaml.safe_load(text))


class TerminalSuite:
    """`envs.authoring.tasks.TaskSuite` for `terminal`."""

    env = "terminal"
    shell_prompt = "$ "

    def __init__(self, tasks: tuple[TerminalTask, ...]) -> None:
        self.book = TaskBook(self.env, tasks)

    def tasks(self, split: Split) -> list[Task]:
        return self.book.tasks(split)

    def pick(self, task_id: str | None, seed: int | None) -> TerminalTask:
        """The task named `task_id`, else one drawn from the train split by `seed`."""
        return self.book.pick(task_id, seed)

    def parse_action(self, text: str) -> dict[str, Any]:
        """The whole text is the command (several lines are fine); a ```bash fence is unwrapped."""
        command = text.strip()
        fenced = _FENCE.match(command)
        if fenced:
            command = fenced.group("body").strip()
        if not command:
            raise ActionParseError(f"empty action: send a shell command, or `{SUBMIT}` when done")
        return {"command": command}

    def render_observation(self, observation: dict[str, Any]) -> str:
        output, code = observation["output"], observation.get("exit_code")
        if not code:
            return output
        separator = "\n" if output and not output.endswith("\n") else ""
        return f"{output}{separator}[exit {code}]"


SUITE = TerminalSuite(load_tasks())
