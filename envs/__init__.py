"""OpenEnv-compatible environments: the authoring API, the server and the client.

Nothing here imports Ray or torch: this package is what runs inside a sandbox.
"""

from envs.base import Action, Environment, EnvMetadata, Observation, State, tool
from envs.client import EnvClient, StepResult, ToolResult
from envs.registry import BUILTIN_ENVS, resolve_env_class
from envs.server import EnvServer, ServerConfig

__all__ = [
    "BUILTIN_ENVS",
    "Action",
    "EnvClient",
    "EnvMetadata",
    "EnvServer",
    "Environment",
    "Observation",
    "ServerConfig",
    "State",
    "StepResult",
    "ToolResult",
    "resolve_env_class",
    "tool",
]
