"""The authoring API: what an environment implements.

It has the same shape as OpenEnv's `Environment` (reset / step / state, optional async
forms, pydantic Action / Observation / State), so the server runs classes written
against either base unchanged. An environment overrides at least one form of `reset`
and one of `step`; the sync form of a pair runs in a per-session thread, the async
form on the server's event loop.

Tools for MCP (`tools/list`, `tools/call`) are methods marked with `@tool`.
"""

from __future__ import annotations

import asyncio
import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field


class Action(BaseModel):
    """Base class for an environment's actions."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    metadata: dict[str, Any] = Field(default_factory=dict)


class Observation(BaseModel):
    """Base class for observations; `reward` and `done` travel beside it on the wire."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    done: bool = False
    reward: bool | int | float | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class State(BaseModel):
    """Base class for an episode's state; environments may add fields freely."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)
    episode_id: str | None = None
    step_count: int = Field(default=0, ge=0)


class EnvMetadata(BaseModel):
    """What `GET /metadata` returns (OpenEnv's `EnvironmentMetadata`)."""

    name: str
    description: str
    readme_content: str | None = None
    version: str | None = None
    author: str | None = None
    documentation_url: str | None = None


ActT = TypeVar("ActT", bound=Action)
ObsT = TypeVar("ObsT", bound=Observation)
StateT = TypeVar("StateT", bound=State)

_TOOL_MARK = "__hillclimb_tool__"


def tool(fn: Callable[..., Any] | None = None, *, name: str | None = None) -> Any:
    """Mark an environment method as an MCP tool; its signature becomes the input schema."""

    def mark(f: Callable[..., Any]) -> Callable[..., Any]:
        setattr(f, _TOOL_MARK, name or f.__name__)
        return f

    return mark(fn) if fn is not None else mark


def tool_methods(env: object) -> dict[str, Callable[..., Any]]:
    """The bound `@tool` methods of an environment instance, by tool name."""
    found: dict[str, Callable[..., Any]] = {}
    for klass in reversed(type(env).__mro__):
        for attr, value in vars(klass).items():
            tool_name = getattr(value, _TOOL_MARK, None)
            if tool_name is not None:
                found[tool_name] = getattr(env, attr)
    return found


class Environment(ABC, Generic[ActT, ObsT, StateT]):
    """An environment: one instance per session.

    Set `SUPPORTS_CONCURRENT_SESSIONS = True` when several instances may live in one
    server process at once (no shared mutable globals, no process-wide side effects).
    """

    SUPPORTS_CONCURRENT_SESSIONS: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if inspect.isabstract(cls):
            return
        for sync_name, async_name in (("reset", "reset_async"), ("step", "step_async")):
            if _inherited_from_base(cls, sync_name) and _inherited_from_base(cls, async_name):
                raise TypeError(f"{cls.__name__} must override {sync_name}() or {async_name}()")

    def reset(self, seed: int | None = None, episode_id: str | None = None, **kwargs: Any) -> ObsT:
        return _run_coroutine(self.reset_async(seed=seed, episode_id=episode_id, **kwargs))

    def step(self, action: ActT, timeout_s: float | None = None, **kwargs: Any) -> ObsT:
        return _run_coroutine(self.step_async(action, timeout_s=timeout_s, **kwargs))

    async def reset_async(self, seed: int | None = None, episode_id: str | None = None, **kwargs: Any) -> ObsT:
        return self.reset(seed=seed, episode_id=episode_id, **kwargs)

    async def step_async(self, action: ActT, timeout_s: float | None = None, **kwargs: Any) -> ObsT:
        return self.step(action, timeout_s=timeout_s, **kwargs)

    @property
    @abstractmethod
    def state(self) -> StateT: ...

    def close(self) -> None:
        """Release what the instance holds; called once when its session ends."""

    def get_metadata(self) -> EnvMetadata:
        doc = inspect.getdoc(type(self)) or type(self).__name__
        return EnvMetadata(name=type(self).__name__, description=doc.split("\n\n")[0], readme_content=doc)


def _inherited_from_base(cls: type, name: str) -> bool:
    owner = next(k for k in cls.__mro__ if name in vars(k))
    return owner is Environment


def _run_coroutine(coro: Any) -> Any:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    coro.close()
    raise RuntimeError("this environment is async-only: call its *_async methods from a running event loop")
