"""What `hillclimb env serve TARGET` serves: an environment class, or an OpenEnv app module.

    toy_terminal                          a built-in name, or an installed `hillclimb.envs` entry point
    package.module:Class                  a class (types from hints, generics, or --action/--observation),
                                          or an `EnvPackage` naming one (envs.authoring.packages)
    package.server.app                    a module calling OpenEnv's `create_app(env, Action, Observation)`,
                                          as OpenEnv environments ship one: the classes it passes are taken

An app module is imported with `create_app` recording its arguments instead of building a
FastAPI app, so the environment is served by this server exactly as OpenEnv was told to serve it.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from envs.authoring.packages import EnvPackage
from envs.authoring.registry import is_named_env, resolve_env_class
from envs.server.runtime import EnvRuntime
from hillclimb.errors import TargetNotFoundError


def runtime_for(target: str, *, action: str | None = None, observation: str | None = None) -> EnvRuntime:
    """The runtime serving `target`; `action` and `observation` ('module:Class') override what
    the environment's hints and generics say."""
    if not is_named_env(target) and ":" not in target and _is_module(target):
        return _from_app_module(target)
    return EnvRuntime(
        resolve_env_class(target),
        action_cls=_named_class(action, "--action"),
        observation_cls=_named_class(observation, "--observation"),
    )


def env_class_of(target: str) -> type:
    """The environment class `target` serves (an app module's, from its create_app call)."""
    if not is_named_env(target) and ":" not in target and _is_module(target):
        return _from_app_module(target).env_cls
    return resolve_env_class(target)


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _named_class(path: str | None, option: str) -> type | None:
    if path is None:
        return None
    module_name, sep, attr = path.partition(":")
    if not sep:
        raise TargetNotFoundError(f"{option} {path!r}: name a class as 'package.module:Class'")
    try:
        found = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise TargetNotFoundError(f"{option} {path!r}: {e}") from e
    if not isinstance(found, type):
        raise TargetNotFoundError(f"{option} {path!r} is a {type(found).__name__}, not a class")
    return found


def _from_app_module(module_name: str) -> EnvRuntime:
    with _recording_create_app() as calls:
        sys.modules.pop(module_name, None)  # imported before, it built a real app: import it again
        module = importlib.import_module(module_name)
    if not calls:
        packages = [f"{module_name}:{name}" for name, value in vars(module).items() if isinstance(value, EnvPackage)]
        hint = f" It exports {' and '.join(map(repr, packages))}: serve that." if packages else ""
        raise TargetNotFoundError(
            f"module {module_name!r} calls no create_app and is no installed hillclimb.envs entry point: serve an "
            "environment class or EnvPackage as 'package.module:Name', or the module that calls OpenEnv's "
            f"create_app(env, Action, Observation).{hint}"
        )
    env, action_cls, observation_cls, state_cls = calls[-1]
    env_cls = env if isinstance(env, type) else _class_of(env)
    factory = None if isinstance(env, type) else env
    return EnvRuntime(
        env_cls, factory=factory, action_cls=action_cls, observation_cls=observation_cls, state_cls=state_cls
    )


def _class_of(factory: Callable[[], Any]) -> type:
    """The class a factory function makes (one instance made and closed to see it)."""
    instance = factory()
    try:
        return type(instance)
    finally:
        if callable(close := getattr(instance, "close", None)):
            close()


@contextmanager
def _recording_create_app() -> Iterator[list[tuple[Any, type, type, type | None]]]:
    """While importing an app module: OpenEnv's `create_app` records (env, Action, Observation,
    State) instead of building an app."""
    try:
        from openenv.core import env_server
        from openenv.core.env_server import http_server
    except ImportError as e:
        raise TargetNotFoundError(
            f"serving an OpenEnv app module needs the openenv package: {e} (a hillclimb environment package is "
            "served by its installed name or as 'package:ENVIRONMENT')"
        ) from e
    original = http_server.create_app
    signature = inspect.signature(original)
    calls: list[tuple[Any, type, type, type | None]] = []

    def recording(*args: Any, **kwargs: Any) -> object:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()  # create_app's own default state class, as OpenEnv would use it
        given = bound.arguments
        calls.append((given["env"], given["action_cls"], given["observation_cls"], given.get("state_cls")))
        return object()  # the app itself is never served

    owners = [m for m in (env_server, http_server) if getattr(m, "create_app", None) is original]
    for owner in owners:
        owner.create_app = recording  # type: ignore[attr-defined]
    try:
        yield calls
    finally:
        for owner in owners:
            owner.create_app = original  # type: ignore[attr-defined]
