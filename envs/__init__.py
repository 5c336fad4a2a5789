"""OpenEnv-compatible environments, a room per job.

    authoring/   what an environment implements, its task suites, and how a name finds both
    server/      the environment server, and the process a sandbox runs (`python -m envs`)
    client/      the clients, and the handle a provider hands out
    wire/        HTTP and WebSocket, sans I/O: what the server and the clients both speak
    sandbox/     the inside of a sandbox: the warden, the system call filter, verification
    builtin/     hillclimb's own environments (toy_terminal, terminal, inventory, probe)

`deadline` (waiting without losing a cancellation) and `digest` (what an image was built from)
serve several rooms.

Nothing here imports Ray or torch: this package is what runs inside a sandbox. The names
below load their module on first use, so importing one submodule (an error type, the
task schema) does not load the server and the client with it.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Action": "envs.authoring.base",
    "Environment": "envs.authoring.base",
    "EnvMetadata": "envs.authoring.base",
    "Observation": "envs.authoring.base",
    "State": "envs.authoring.base",
    "tool": "envs.authoring.base",
    "EnvClient": "envs.client.ws_client",
    "StepResult": "envs.client.base",
    "ToolResult": "envs.client.base",
    "BUILTIN_ENVS": "envs.authoring.registry",
    "find_env": "envs.authoring.registry",
    "resolve_env_class": "envs.authoring.registry",
    "EnvPackage": "envs.authoring.packages",
    "FileSuite": "envs.authoring.file_suite",
    "TaskRow": "envs.authoring.file_suite",
    "EnvServer": "envs.server.env_server",
    "ServerConfig": "envs.server.env_server",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'envs' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
