"""OpenEnv-compatible environments: the authoring API, the server and the client.

Nothing here imports Ray or torch: this package is what runs inside a sandbox. The names
below load their module on first use, so importing one submodule (an error type, the
task schema) does not load the server and the client with it.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Action": "envs.base",
    "Environment": "envs.base",
    "EnvMetadata": "envs.base",
    "Observation": "envs.base",
    "State": "envs.base",
    "tool": "envs.base",
    "EnvClient": "envs.client",
    "StepResult": "envs.client",
    "ToolResult": "envs.client",
    "BUILTIN_ENVS": "envs.registry",
    "find_env": "envs.registry",
    "resolve_env_class": "envs.registry",
    "EnvPackage": "envs.packages",
    "FileSuite": "envs.file_suite",
    "TaskRow": "envs.file_suite",
    "EnvServer": "envs.server",
    "ServerConfig": "envs.server",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'envs' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
