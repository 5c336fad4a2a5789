"""Find providers by name: built-ins, plus any package's `hillclimb.providers` entry point.

A separate package adds a provider with, in its pyproject.toml:

    [project.entry-points."hillclimb.providers"]
    myprovider = "my_package.provider:MyProvider"
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import entry_points
from typing import Any, get_type_hints

from pydantic import BaseModel, ConfigDict, create_model, model_validator

from hillclimb.errors import TargetNotFoundError
from providers.base import SandboxProvider

ENTRY_POINT_GROUP = "hillclimb.providers"
BUILTIN_PROVIDERS: dict[str, str] = {
    "local": "providers.local:LocalProvider",
    "docker": "providers.docker:DockerProvider",
}
_EXTRAS = {"kubernetes": "k8s"}
"""The extra that installs a provider's packages, where it is not named like the provider."""


def available_providers() -> dict[str, str]:
    """Provider name → import path; plugins may add names but not shadow built-ins."""
    found = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return {**found, **BUILTIN_PROVIDERS}


def provider_class(name: str) -> type:
    path = available_providers().get(name)
    if path is None:
        raise TargetNotFoundError(
            f"unknown sandbox provider {name!r}; available: {', '.join(sorted(available_providers()))}"
        )
    module_name, _, attr = path.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except ImportError as e:
        raise TargetNotFoundError(
            f"provider {name!r} needs a package that is not installed: {e} "
            f"(try pip install 'hillclimb[{_EXTRAS.get(name, name)}]')"
        ) from e


def options_model(name: str) -> type[BaseModel]:
    """The provider's constructor options as a pydantic model (from its keyword parameters and
    their annotations): a bad option is reported at config load, by name, not inside an actor.
    A provider whose options depend on each other says how in a static `check_options(options)`
    that raises ValueError; it runs on the validated options."""
    cls = provider_class(name)
    hints = get_type_hints(cls.__init__, include_extras=True)  # Annotated constraints (Field(ge=...)) kept
    fields: dict[str, Any] = {}
    for param in inspect.signature(cls.__init__).parameters.values():
        if param.name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param.name] = (hints.get(param.name, Any), default)
    config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    check = getattr(cls, "check_options", None)
    validators = {"_check_options": model_validator(mode="after")(_runs(check))} if check else {}
    return create_model(f"{cls.__name__}Options", __config__=config, __validators__=validators, **fields)


def _runs(check: Any) -> Any:
    def validate(options: BaseModel) -> BaseModel:
        check(dict(options))
        return options

    return validate


def make_provider(name: str, **options: Any) -> SandboxProvider:
    return provider_class(name)(**options)


@asynccontextmanager
async def open_provider(name: str, **options: Any) -> AsyncIterator[SandboxProvider]:
    """A provider that is closed (its sandboxes destroyed) on exit."""
    provider = make_provider(name, **options)
    try:
        yield provider
    finally:
        await provider.close()
