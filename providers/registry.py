"""Find providers by name, built-ins plus any package's `hillclimb.providers` entry point, and
build them from their options models (`hillclimb.config.providers`, which says how a plugin
registers both).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import entry_points
from typing import Any, get_type_hints

from pydantic import BaseModel, ConfigDict, create_model

from hillclimb.config.providers import PROVIDERS_GROUP, PluginOptions, options_model
from hillclimb.errors import TargetNotFoundError
from providers.contract import SandboxProvider

BUILTIN_PROVIDERS: dict[str, str] = {
    "local": "providers.local:LocalProvider",
    "docker": "providers.docker:DockerProvider",
}
_EXTRAS = {"kubernetes": "k8s"}
"""The extra that installs a provider's packages, where it is not named like the provider."""


def available_providers() -> dict[str, str]:
    """Provider name → import path; plugins may add names but not shadow built-ins."""
    found = {ep.name: ep.value for ep in entry_points(group=PROVIDERS_GROUP)}
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


def make_provider(name: str, **options: Any) -> SandboxProvider:
    """The provider `name`, built from `options` checked by its model (pydantic's ValidationError
    names each bad one)."""
    cls = provider_class(name)
    model = options_model(name)
    if model is PluginOptions:
        model = _constructor_options(cls)
    return cls(**dict(model.model_validate(options)))


def _constructor_options(cls: type) -> type[BaseModel]:
    """A plugin's options, when it registers no model: its constructor's keyword parameters,
    their annotations (Annotated constraints such as Field(ge=...) kept) and defaults."""
    hints = get_type_hints(cls.__init__, include_extras=True)
    fields: dict[str, Any] = {}
    for param in inspect.signature(cls.__init__).parameters.values():
        if param.name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param.name] = (hints.get(param.name, Any), default)
    config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    return create_model(f"{cls.__name__}Options", __config__=config, **fields)


@asynccontextmanager
async def open_provider(name: str, **options: Any) -> AsyncIterator[SandboxProvider]:
    """A provider that is closed (its sandboxes destroyed) on exit."""
    provider = make_provider(name, **options)
    try:
        yield provider
    finally:
        await provider.close()
