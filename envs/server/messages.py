"""The session messages every binding carries (reset, step, state, mcp) and the error frames it answers with.

The WebSocket session and the HTTP session binding both run a message through
`run_message` and report a failure with `env_error_frame`, so the two speak the same
error codes and hold the environment to the same step deadline.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from envs.server import mcp
from envs.server.runtime import SessionRunner
from hillclimb.errors import EnvError, ErrorCode, MessageValidationError, UnknownMessageTypeError


class StepDeadline(Exception):
    """A reset or step ran past `step_timeout_s` (as opposed to the environment raising TimeoutError)."""


def error_frame(code: ErrorCode, message: str, **extra: Any) -> dict[str, Any]:
    return {"type": "error", "data": {"message": message, "code": code.value, **extra}}


def env_error_frame(e: EnvError) -> dict[str, Any]:
    extra = {"errors": getattr(e, "errors", [])} if isinstance(e, MessageValidationError) else {}
    return error_frame(e.code, str(e), **extra)


async def run_message(
    runner: SessionRunner, env_name: str, kind: Any, data: Any, bounded: Callable[[Awaitable[Any]], Awaitable[Any]]
) -> dict[str, Any] | None:
    """One reset, step, state or MCP message on a session, whatever carried it; `bounded` holds
    the work to the step deadline. The reply as the WebSocket protocol frames it."""
    if kind == "step":
        return {"type": "observation", "data": await bounded(runner.step(data))}
    if kind == "reset":
        if not isinstance(data, dict):
            raise MessageValidationError(f"reset data must be a JSON object, got {type(data).__name__}", errors=[])
        return {"type": "observation", "data": await bounded(runner.reset(data))}
    if kind == "state":
        return {"type": "state", "data": runner.state()}
    if kind == "mcp":
        reply = await bounded(mcp.handle_jsonrpc(data, runner.tools, env_name))
        return {"type": "mcp", "data": reply} if reply is not None else None
    raise UnknownMessageTypeError(f"unknown message type {kind!r}; expected one of reset, step, state, mcp, close")
