"""MCP tools of an environment, served as JSON-RPC 2.0 (`tools/list`, `tools/call`).

Tools are the environment's `@tool` methods; each signature becomes a pydantic model that
both publishes the input schema and validates the arguments of a call. A tool that raises
returns an MCP result with `isError: true` (the agent sees the failure); a malformed
request gets a JSON-RPC error.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pydantic

from envs.authoring.base import tool_methods
from hillclimb.errors import validation_problems

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
SERVER_ERROR = -32000
"""JSON-RPC's range for implementation-defined server errors: at capacity, past the step timeout."""

PROTOCOL_VERSION = "2025-06-18"
RESERVED_TOOL_NAMES = frozenset({"reset", "step", "state", "close"})
"""Lifecycle controls an agent must never see as tools (OpenEnv RFC 003)."""

SyncCaller = Callable[..., Awaitable[Any]]


def _input_model(name: str, fn: Callable[..., Any]) -> type[pydantic.BaseModel]:
    fields: dict[str, Any] = {}
    # eval_str: under `from __future__ import annotations` the hints are strings naming things
    # (Literal, the env's own models) that only the tool's module can resolve.
    for param in inspect.signature(fn, eval_str=True).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise TypeError(f"tool {name!r} must not take *args or **kwargs")
        annotation = Any if param.annotation is param.empty else param.annotation
        default = ... if param.default is param.empty else param.default
        fields[param.name] = (annotation, default)
    return pydantic.create_model(f"{name}_input", __config__=pydantic.ConfigDict(extra="forbid"), **fields)


class ToolSet:
    """The tools of one environment instance."""

    def __init__(self, env: object, call_sync: SyncCaller) -> None:
        self._call_sync = call_sync
        self._tools = tool_methods(env)
        clash = RESERVED_TOOL_NAMES & set(self._tools)
        if clash:
            raise TypeError(f"tool names {sorted(clash)} are reserved for the episode lifecycle")
        self._inputs = {name: _input_model(name, fn) for name, fn in self._tools.items()}

    def __bool__(self) -> bool:
        return bool(self._tools)

    @property
    def names(self) -> list[str]:
        return list(self._tools)

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "name": name,
                "description": inspect.getdoc(fn) or "",
                "inputSchema": self._inputs[name].model_json_schema(),
            }
            for name, fn in self._tools.items()
        ]

    async def call(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        fn = self._tools[name]
        args = self._inputs[name].model_validate(arguments)
        kwargs = {field: getattr(args, field) for field in type(args).model_fields}
        try:
            if inspect.iscoroutinefunction(fn):
                value = await fn(**kwargs)
            else:
                value = await self._call_sync(fn, **kwargs)
        except Exception as e:
            return {"content": [{"type": "text", "text": f"{type(e).__name__}: {e}"}], "isError": True}
        return _tool_result(value)


def _tool_result(value: Any) -> dict[str, Any]:
    if isinstance(value, pydantic.BaseModel):
        value = value.model_dump(mode="json")
    text = value if isinstance(value, str) else json.dumps(value)
    result: dict[str, Any] = {"content": [{"type": "text", "text": text}], "isError": False}
    if isinstance(value, dict):
        result["structuredContent"] = value
    return result


def rpc_error(request_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}


def _rpc_result(request_id: Any, result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


async def handle_jsonrpc(request: Any, tools: ToolSet, server_name: str) -> dict[str, Any] | None:
    """Answer one JSON-RPC request; None for a notification (no reply is due)."""
    if not isinstance(request, dict) or request.get("jsonrpc") != "2.0" or not isinstance(request.get("method"), str):
        return rpc_error(None, INVALID_REQUEST, "expected a JSON-RPC 2.0 request object with a 'method' string")
    reply = await _answer(request, tools, server_name)
    # A request without an id is a notification: it runs, but JSON-RPC 2.0 forbids any reply.
    return reply if "id" in request else None


async def _answer(request: dict[str, Any], tools: ToolSet, server_name: str) -> dict[str, Any] | None:
    request_id, method = request.get("id"), request["method"]
    params = request.get("params", {})
    if not isinstance(params, dict):
        return rpc_error(request_id, INVALID_PARAMS, "'params' must be an object")
    if method.startswith("notifications/"):
        return None
    if method == "initialize":
        info = {"protocolVersion": PROTOCOL_VERSION, "capabilities": {"tools": {}}, "serverInfo": {"name": server_name}}
        return _rpc_result(request_id, info)
    if method == "ping":
        return _rpc_result(request_id, {})
    if method == "tools/list":
        return _rpc_result(request_id, {"tools": tools.describe()})
    if method == "tools/call":
        return await _call(request_id, params, tools)
    supported = "initialize, ping, tools/list, tools/call"
    return rpc_error(request_id, METHOD_NOT_FOUND, f"unknown method {method!r}; supported: {supported}")


async def _call(request_id: Any, params: dict[str, Any], tools: ToolSet) -> dict[str, Any]:
    name, arguments = params.get("name"), params.get("arguments", {})
    if name not in tools.names:
        return rpc_error(request_id, INVALID_PARAMS, f"unknown tool {name!r}; this environment has {tools.names}")
    if not isinstance(arguments, dict):
        return rpc_error(request_id, INVALID_PARAMS, "'arguments' must be an object")
    try:
        return _rpc_result(request_id, await tools.call(name, arguments))
    except pydantic.ValidationError as e:
        return rpc_error(request_id, INVALID_PARAMS, f"bad arguments for {name!r}: {validation_problems(e)}")
