"""Each sandbox provider's options as a pydantic model, for `provider.options` to be checked at
config load, by name, without importing the provider.

A stand-in until the providers' own options models land (issue 32, H3): local and docker are
declared here, mirroring their constructors' keyword parameters; a plugin named by a
`hillclimb.providers` entry point is accepted with any options.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from hillclimb.errors import TargetNotFoundError


class LocalOptions(BaseModel):
    """`providers.local.LocalProvider`'s options."""

    model_config = ConfigDict(extra="forbid")

    root: str | Path | None = None
    isolation: Literal["auto", "namespaces", "none"] = "auto"
    uid_base: int = 200_000
    uid_slots: int = 60_000


class DockerOptions(BaseModel):
    """`providers.docker.DockerProvider`'s options."""

    model_config = ConfigDict(extra="forbid")

    image: str = "hillclimb/sandbox:dev"
    root: str | Path | None = None
    client: Any = None
    runtime: str | None = None
    check_image: bool = True


class _PluginOptions(BaseModel):
    model_config = ConfigDict(extra="allow")


BUILTIN_OPTIONS: dict[str, type[BaseModel]] = {"local": LocalOptions, "docker": DockerOptions}


def options_model(name: str) -> type[BaseModel]:
    """The options model of the provider called `name`; TargetNotFoundError for an unknown one."""
    plugins = {ep.name for ep in entry_points(group="hillclimb.providers")}
    if name in BUILTIN_OPTIONS:
        return BUILTIN_OPTIONS[name]
    if name in plugins:
        return _PluginOptions
    raise TargetNotFoundError(
        f"unknown sandbox provider {name!r}; available: {', '.join(sorted(plugins | set(BUILTIN_OPTIONS)))}"
    )
