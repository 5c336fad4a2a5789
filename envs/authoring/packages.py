"""`EnvPackage`: what an environment name resolves to — the class a sandbox serves, and its tasks.

    hillclimb.envs entry point ─┐
    built-in name ──────────────┼─► EnvPackage(env="pkg.env:MyEnv", suite=SUITE | "pkg.tasks:SUITE" | None)
    import path pkg.mod:attr ───┘        │                          │
                                          ▼                          ▼
                         served in the sandbox (env serve)   rollouts, training, evaluation

A user's package exports one (`ENVIRONMENT = EnvPackage(...)`) and names it in its
pyproject.toml, so `env.name: my_env` finds it once installed:

    [project.entry-points."hillclimb.envs"]
    my_env = "my_env:ENVIRONMENT"

The environment class is kept as an import path so that listing environments imports none.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from typing import Any

from envs.authoring.tasks import Task, TaskSuite
from hillclimb.errors import EnvModuleNotFoundError, TargetNotFoundError
from hillclimb.splits import Split


@dataclass(frozen=True)
class EnvPackage:
    """An environment class and its task suite, found under one name."""

    env: str
    """The environment class as 'package.module:Class': what a sandbox's server serves."""
    suite: TaskSuite | str | None = None
    """Its task suite, or the import path 'package.module:NAME' of one (imported on first use);
    None for an environment served without tasks."""

    def env_class(self) -> type:
        found = import_object(self.env, what="environment class")
        if not isinstance(found, type):
            raise TargetNotFoundError(f"{self.env!r} names an object of type {type(found).__name__}, not a class")
        return found

    def task_suite(self, name: str) -> TaskSuite:
        """The suite, seen under `name`: the name groups carry and the scripted policy looks up again."""
        if self.suite is None:
            raise TargetNotFoundError(
                f"environment {name!r} is a bare environment class with no task suite, so it can be served "
                "but not rolled out: export `EnvPackage(env='package.module:Class', suite=...)` from your package "
                "(a suite from a file: envs.authoring.file_suite.FileSuite.from_file('tasks.jsonl', ...)) and name "
                "that instead ('package:ENVIRONMENT', or its hillclimb.envs entry point; `hillclimb env init` writes "
                "one)"
            )
        suite = import_object(self.suite, what="task suite") if isinstance(self.suite, str) else self.suite
        return suite if suite.env == name else _SuiteNamed(name, suite)


class _SuiteNamed:
    """A suite found under another name than its own `env` (say 'my_env:ENVIRONMENT' for 'my_env')."""

    def __init__(self, env: str, suite: TaskSuite) -> None:
        self.env = env
        self._suite = suite

    def tasks(self, split: Split) -> list[Task]:
        return self._suite.tasks(split)

    def parse_action(self, text: str) -> dict[str, Any]:
        return self._suite.parse_action(text)

    def render_observation(self, observation: dict[str, Any]) -> str:
        return self._suite.render_observation(observation)

    def __getattr__(self, name: str) -> Any:
        """What else the suite offers (a system prompt, a shell prompt, tool-call text) as its own."""
        return getattr(self._suite, name)


def search_working_directory() -> None:
    """Put the working directory first on `sys.path`, as `python -m` does: every `hillclimb` command
    finds an environment's modules there before the installed packages. What it starts searches the
    same places: the local provider's zygote runs under `python -m` in that directory, and a local
    Ray's workers get it on PYTHONPATH (orchestrator.driver.connect_ray)."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def import_object(path: str, *, what: str) -> Any:
    """The object at 'package.module:attr' (attr may be dotted); errors name the path and what was expected."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise TargetNotFoundError(f"{what} {path!r}: name it as 'package.module:Name'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        if isinstance(e, ModuleNotFoundError) and e.name == module_name.partition(".")[0]:
            raise EnvModuleNotFoundError(  # the package itself, not a module it imports or lacks
                f"cannot import {module_name!r} for {what} {path!r}: no module named {e.name!r} in the working "
                f"directory ({os.getcwd()}) or among the packages installed in {sys.prefix}. Run hillclimb from "
                f"the directory that holds {e.name} (your project's), or install your project into this Python: "
                "`pip install -e <project directory>`",
                module=e.name,
            ) from e
        raise TargetNotFoundError(f"cannot import {module_name!r} for {what} {path!r}: {e}") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            from difflib import get_close_matches

            close = get_close_matches(part, [n for n in dir(obj) if not n.startswith("_")], n=3)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            owner = getattr(obj, "__name__", module_name)
            raise TargetNotFoundError(f"{what} {path!r}: {owner!r} has no attribute {part!r}{hint}")
        obj = getattr(obj, part)
    return obj
