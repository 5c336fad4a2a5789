"""Environment targets: a built-in name (`toy_terminal`) or an import path (`pkg.module:Class`)."""

from __future__ import annotations

import importlib

from envs.errors import TargetNotFoundError

BUILTIN_ENVS: dict[str, str] = {
    "toy_terminal": "envs.toy_terminal:ToyTerminalEnv",
    "terminal": "envs.terminal:TerminalEnv",
    "inventory": "envs.inventory:InventoryEnv",
    "probe": "envs.probe:ProbeEnv",
}
"""Built-in environments by name; values are import paths, so listing them imports nothing."""


def resolve_env_class(target: str) -> type:
    """The environment class named by `target`; errors list the built-in names."""
    path = BUILTIN_ENVS.get(target, target)
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise TargetNotFoundError(
            f"unknown environment {target!r}: use a built-in name ({', '.join(sorted(BUILTIN_ENVS))}) "
            "or an import path 'package.module:ClassName'"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise TargetNotFoundError(f"cannot import {module_name!r} for environment {target!r}: {e}") from e
    try:
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise TargetNotFoundError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(obj, type):
        raise TargetNotFoundError(f"{path!r} is a {type(obj).__name__}, not an environment class")
    return obj


def class_path(cls: type) -> str:
    """'module:Class': how a claimed server names the environment it serves, and how its claimant checks it."""
    return f"{cls.__module__}:{cls.__qualname__}"
