"""Adapts an environment class to the server: its types, its schema, one runner per session.

Works on any class with OpenEnv's shape — ours (`envs.authoring.base.Environment`) or OpenEnv's own
`Environment` — without importing OpenEnv. An overridden `*_async` method is awaited on
the event loop; otherwise the sync method runs on the session's own thread, so a slow
sync environment never blocks other sessions — or inline, once its calls have proven short
(envs.server.inline).
"""

from __future__ import annotations

import asyncio
import inspect
import time
import typing
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property, partial
from typing import Any

import pydantic

from envs.authoring import base
from envs.server.inline import InlineCalls
from envs.server.mcp import ToolSet
from envs.server.metrics import EnvCallStats
from hillclimb.errors import FactoryError, MessageValidationError

# The two base classes whose default *_async methods merely call the sync ones.
_BASE_CLASSES = {("envs.authoring.base", "Environment"), ("openenv.core.env_server.interfaces", "Environment")}


def _is_base_class(klass: type) -> bool:
    return (klass.__module__, klass.__qualname__) in _BASE_CLASSES


def _overrides(cls: type, name: str) -> bool:
    owner = next((k for k in cls.__mro__ if name in vars(k)), None)
    return owner is not None and not _is_base_class(owner)


def _generic_args(cls: type) -> tuple[Any, ...]:
    for klass in cls.__mro__:
        for orig in getattr(klass, "__orig_bases__", ()):
            args = typing.get_args(orig)
            if args and all(isinstance(a, type) for a in args):
                return args
    return ()


def _model_from_hints(fn: Any, key: str) -> type[pydantic.BaseModel] | None:
    try:
        hint = typing.get_type_hints(fn).get(key)
    except Exception:  # unresolvable forward references: fall back to generic args
        return None
    return hint if isinstance(hint, type) and issubclass(hint, pydantic.BaseModel) else None


def _pick_model(hinted: type | None, generic: tuple[Any, ...], index: int, default: type | None) -> Any:
    if hinted is not None:
        return hinted
    if len(generic) > index and issubclass(generic[index], pydantic.BaseModel):
        return generic[index]
    return default


class EnvRuntime:
    """Everything the server needs to know about one environment class. Its action, observation
    and state types come from the arguments when given (as OpenEnv's `create_app` is told them),
    else from `step()`'s and `state`'s type hints, else from the class's generic parameters
    (`Environment[Action, Observation, State]`); an action type found nowhere is an error."""

    def __init__(
        self,
        env_cls: type,
        *,
        factory: Callable[[], Any] | None = None,
        action_cls: type | None = None,
        observation_cls: type | None = None,
        state_cls: type | None = None,
    ) -> None:
        for attr in ("reset", "step", "state"):
            if not hasattr(env_cls, attr):
                raise FactoryError(f"{env_cls.__qualname__} is not an environment: it has no {attr!r}")
        self.env_cls = env_cls
        self.factory = factory or env_cls
        generic = _generic_args(env_cls)
        step_fn = env_cls.step_async if _overrides(env_cls, "step_async") else env_cls.step
        state_fget = getattr(inspect.getattr_static(env_cls, "state"), "fget", None)
        action = action_cls or _pick_model(_model_from_hints(step_fn, "action"), generic, 0, None)
        if action is None:
            raise FactoryError(
                f"cannot tell {env_cls.__qualname__}'s action type: step() has no type hint for its action and "
                "the class names no Environment[Action, Observation, State] parameters; pass the class "
                "(hillclimb env serve ... --action package.module:ActionClass), or serve the module that "
                "calls OpenEnv's create_app",
                factory_name=env_cls.__qualname__,
            )
        self.action_cls = action
        self.observation_cls = observation_cls or _pick_model(
            _model_from_hints(step_fn, "return"), generic, 1, base.Observation
        )
        self.state_cls = state_cls or _pick_model(
            state_fget and _model_from_hints(state_fget, "return"), generic, 2, base.State
        )
        self.async_reset = _overrides(env_cls, "reset_async")
        self.async_step = _overrides(env_cls, "step_async")
        self.reset_params = inspect.signature(env_cls.reset_async if self.async_reset else env_cls.reset).parameters
        self.concurrent = bool(getattr(env_cls, "SUPPORTS_CONCURRENT_SESSIONS", False))

    @property
    def name(self) -> str:
        return self.env_cls.__name__

    def schema(self) -> dict[str, Any]:
        return {
            "action": self.action_cls.model_json_schema(),
            "observation": self.observation_cls.model_json_schema(),
            "state": self.state_cls.model_json_schema(),
        }

    @cached_property
    def metadata(self) -> dict[str, Any]:
        probe = self.new_instance()
        try:
            meta = probe.get_metadata() if hasattr(probe, "get_metadata") else None
        finally:
            _close_quietly(probe)
        if meta is None:
            return base.EnvMetadata(name=self.name, description=self.name).model_dump(mode="json")
        return meta.model_dump(mode="json") if hasattr(meta, "model_dump") else dict(meta)

    def new_instance(self) -> Any:
        try:
            return self.factory()
        except Exception as e:
            raise FactoryError(f"could not create {self.name}: {type(e).__name__}: {e}", factory_name=self.name) from e

    def check_reset_kwargs(self, data: dict[str, Any]) -> dict[str, Any]:
        if "self" in data:  # would collide with the bound instance: a TypeError deep in the call
            raise MessageValidationError("reset() got an argument named 'self'", errors=[])
        if any(p.kind is p.VAR_KEYWORD for p in self.reset_params.values()):
            return data
        keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        known = sorted(k for k, p in self.reset_params.items() if k != "self" and p.kind in keyword)
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise MessageValidationError(f"reset() got unknown argument(s) {unknown}; it accepts {known}", errors=[])
        return data

    def parse_action(self, data: Any) -> Any:
        if not isinstance(data, dict):
            got = type(data).__name__
            raise MessageValidationError(f"a step's data must be a JSON object (the action), got {got}", errors=[])
        try:
            return self.action_cls.model_validate(data)
        except pydantic.ValidationError as e:
            raise MessageValidationError(
                f"invalid {self.action_cls.__name__}: {e.error_count()} error(s): {_summarize(e)}",
                errors=e.errors(include_url=False, include_context=False, include_input=False),
            ) from None


def _summarize(e: pydantic.ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, err['loc'])) or '<root>'}: {err['msg']}" for err in e.errors()[:5])


def _close_quietly(env: Any) -> None:
    close = getattr(env, "close", None)
    if callable(close):
        close()


def serialize_observation(obs: Any) -> dict[str, Any]:
    """OpenEnv's wire shape: `{observation, reward, done[, metadata]}`."""
    if isinstance(obs, pydantic.BaseModel):
        fields = obs.model_dump(mode="json", exclude={"reward", "done"})  # JSON types: datetimes, enums, bytes
        reward, done = getattr(obs, "reward", None), bool(getattr(obs, "done", False))
    elif isinstance(obs, dict):
        fields = {k: v for k, v in obs.items() if k not in ("reward", "done")}
        reward, done = obs.get("reward"), bool(obs.get("done", False))
    else:
        raise TypeError(f"an observation must be a pydantic model or a dict, got {type(obs).__name__}")
    out: dict[str, Any] = {"observation": fields, "reward": reward, "done": done}
    if fields.get("metadata"):
        out["metadata"] = fields["metadata"]
    return out


class SessionRunner:
    """One environment instance and the thread its sync methods run on.

    Each reset and step is timed around the environment's own method into `stats`."""

    def __init__(
        self, runtime: EnvRuntime, stats: EnvCallStats | None = None, inline: InlineCalls | None = None
    ) -> None:
        """`inline`: where this server's sync calls run (envs.server.inline); None keeps them on the thread."""
        self.runtime = runtime
        self.stats = stats or EnvCallStats()
        self.inline = inline
        self.env = runtime.new_instance()
        self._executor: ThreadPoolExecutor | None = None
        try:
            self.tools = ToolSet(self.env, self._call_sync)
        except Exception as e:  # a bad tool signature or a reserved name: the session cannot start
            _close_quietly(self.env)
            raise FactoryError(f"{runtime.name} has unusable MCP tools: {e}", factory_name=runtime.name) from e

    async def _call_sync(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="env-session")
        return await asyncio.get_running_loop().run_in_executor(self._executor, partial(fn, *args, **kwargs))

    async def _call_env(self, call: str, is_async: bool, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if not is_async:
            if self.inline is not None and self.inline.usable():
                return self._timed(call, self.inline.run, fn, *args, **kwargs)
            # timed in the session thread: the hop to it is the server's cost, not the env's
            return await self._call_sync(self._timed, call, fn, *args, **kwargs)
        start = time.perf_counter()
        try:
            return await fn(*args, **kwargs)
        finally:
            self.stats.add(call, time.perf_counter() - start)

    def _timed(self, call: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            elapsed = time.perf_counter() - start
            self.stats.add(call, elapsed)
            if self.inline is not None:
                self.inline.observe(elapsed)

    async def reset(self, data: dict[str, Any]) -> dict[str, Any]:
        kwargs = self.runtime.check_reset_kwargs(data)
        is_async = self.runtime.async_reset
        obs = await self._call_env("reset", is_async, self.env.reset_async if is_async else self.env.reset, **kwargs)
        return serialize_observation(obs)

    async def step(self, data: Any) -> dict[str, Any]:
        action = self.runtime.parse_action(data)
        is_async = self.runtime.async_step
        obs = await self._call_env("step", is_async, self.env.step_async if is_async else self.env.step, action)
        return serialize_observation(obs)

    def state(self) -> dict[str, Any]:
        state = self.env.state
        if isinstance(state, pydantic.BaseModel):
            return state.model_dump(mode="json")
        return dict(state or {})

    def close(self) -> None:
        try:
            _close_quietly(self.env)
        finally:
            if self._executor is not None:
                # A step still hung in the thread cannot be interrupted; do not wait for it.
                self._executor.shutdown(wait=False, cancel_futures=True)
