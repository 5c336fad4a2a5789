"""What every env client shares, whatever its transport: the endpoint, the results, the MCP calls.

`BaseEnvClient` is the API (`reset`, `step`, `state`, `list_tools`, `call_tool`, `close`);
`EnvClient` (`envs.client.ws_client`) carries it over the WebSocket, `HttpEnvClient`
(`envs.client.http_client`) over the HTTP session binding. Both parse a URL into an
`Endpoint` and turn a server's error frame into its typed error (`error_from_frame`).
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel

from envs.client.credentials import Credential
from envs.client.unix_socket import connect_unix
from envs.deadline import within
from hillclimb.errors import (
    ERROR_TYPES,
    ConnectionLostError,
    ConnectTimeoutError,
    EnvError,
    ErrorCode,
    ExecutionError,
    StepTimeoutError,
    TLSError,
)

ObsT = TypeVar("ObsT")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class StepResult(Generic[ObsT]):
    """What `reset()` and `step()` return."""

    observation: ObsT
    reward: float | None
    done: bool
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ToolResult:
    """The result of an MCP tool call; `is_error` means the tool itself failed."""

    text: str
    is_error: bool
    structured: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a server listens: a TCP host and port, or a Unix socket path; behind a proxy, the
    path prefix it routes by and a query string it needs (e.g. `?identifier=` of a session pool)."""

    host: str | None
    port: int | None
    uds: str | None
    tls: bool
    prefix: str = ""
    """The path before the server's own routes ("" when it is served at the root)."""
    query: str = ""
    """Sent with every request, WebSocket upgrade included ("" for none)."""

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme == "unix":
            if not parts.path:
                raise ValueError(f"unix URL {url!r} has no socket path (expected unix:///path/to.sock)")
            return cls(None, None, parts.path, False, "", parts.query)
        if scheme not in ("ws", "wss", "http", "https"):
            raise ValueError(f"unsupported URL scheme in {url!r}: use ws://, wss://, http(s):// or unix://")
        tls = scheme in ("wss", "https")
        prefix = parts.path.rstrip("/")
        if prefix.endswith("/ws"):
            prefix = prefix[: -len("/ws")]
        if not parts.hostname:
            raise ValueError(f"URL {url!r} has no host")
        return cls(parts.hostname, parts.port or (443 if tls else 80), None, tls, prefix, parts.query)

    def target(self, route: str) -> str:
        """The request target for one of the server's routes (`/ws`, `/health`, ...)."""
        return f"{self.prefix}{route}?{self.query}" if self.query else f"{self.prefix}{route}"

    @property
    def path(self) -> str:
        """The WebSocket route's request target."""
        return self.target("/ws")

    @property
    def host_header(self) -> str:
        if self.uds:
            return "localhost"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host  # IPv6 literals need brackets
        return f"{host}:{self.port}"

    async def open(self, factory: Any, timeout: float, ssl: ssl_module.SSLContext | None) -> asyncio.BaseTransport:
        loop = asyncio.get_running_loop()
        if self.uds:
            connected = await within(timeout, connect_unix(self.uds))
            transport, _ = await loop.create_unix_connection(factory, sock=connected)
        else:
            ctx = (ssl or ssl_module.create_default_context()) if self.tls else None
            connecting = loop.create_connection(factory, self.host, self.port, ssl=ctx)
            transport, _ = await within(timeout, connecting)
        return transport


class BaseEnvClient:
    """What every client offers, whatever its transport: reset, step, state, MCP tools, close.

    A subclass supplies the transport (`connect`, `close`, `_request`, `reset`, `step`, ...);
    MCP calls and result parsing are the same on every one."""

    _rpc_ids = 0

    def __init__(
        self,
        url: str,
        *,
        token: str | None,
        credentials: tuple[Credential, ...],
        connect_timeout_s: float,
        message_timeout_s: float | None,
        max_message_bytes: int,
        observation_type: type[BaseModel] | None,
        ssl: ssl_module.SSLContext | None,
    ) -> None:
        self.url = url
        self.endpoint = Endpoint.parse(url)
        self._credentials = credentials + ((Credential.env_token(token),) if token else ())
        self.connect_timeout_s = connect_timeout_s
        self.message_timeout_s = message_timeout_s
        self.max_message_bytes = max_message_bytes
        self.observation_type = observation_type
        self._ssl = ssl
        self._lock = asyncio.Lock()

    async def _connect_retrying(self, open_once: Callable[[float], Awaitable[T]]) -> T:
        """`open_once(time_left)`, retried while the server is not there yet (refused, no socket
        file, a 5xx) until `connect_timeout_s`; an HTTP refusal or a bad certificate is final."""
        deadline = time.monotonic() + self.connect_timeout_s
        delay = 0.002
        last: Exception | None = None  # the previous attempt's error: a timeout alone says nothing
        failed = f"could not connect to {self.url} within {self.connect_timeout_s:g} s"
        while True:
            try:
                return await open_once(max(deadline - time.monotonic(), 0.001))
            except (ConnectionRefusedError, FileNotFoundError, ConnectionResetError, ConnectionLostError) as e:
                if getattr(e, "status", 500) < 500:  # refused by HTTP (no WebSocket here): waiting will not help
                    raise
                last = e
                if time.monotonic() + delay > deadline:
                    raise ConnectTimeoutError(f"{failed}: {e}") from e
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.25)
            except ssl_module.SSLError as e:  # a certificate does not fix itself: no retry
                detail = getattr(e, "verify_message", None)  # what is wrong with the certificate
                raise TLSError(
                    f"TLS handshake with {self.url} failed: {e.reason or e}" + (f" ({detail})" if detail else "")
                ) from e
            except TimeoutError as e:
                raise ConnectTimeoutError(f"{failed}: {last}" if last else failed) from (last or e)

    def __repr__(self) -> str:  # never show a credential
        return f"{type(self).__name__}({self.url!r})"

    async def __aenter__(self) -> Any:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def connected(self) -> bool:
        raise NotImplementedError

    async def connect(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        """End the session on the server, then the connection."""
        raise NotImplementedError

    async def reset(self, seed: int | None = None, episode_id: str | None = None, **kwargs: Any) -> StepResult[Any]:
        """Start a new episode."""
        raise NotImplementedError

    async def send_reset(self, seed: int | None = None, episode_id: str | None = None, **kwargs: Any) -> None:
        """Start a new episode; the reply may be read by the next request (`settle()` reads it)."""
        raise NotImplementedError

    async def settle(self) -> None:
        raise NotImplementedError

    async def step(self, action: dict[str, Any] | BaseModel) -> StepResult[Any]:
        raise NotImplementedError

    async def state(self) -> dict[str, Any]:
        raise NotImplementedError

    async def _request(self, message: dict[str, Any], *, reconnect: bool) -> dict[str, Any]:
        raise NotImplementedError

    async def _rpc(self, method: str, params: dict[str, Any]) -> Any:
        self._rpc_ids += 1
        request = {"jsonrpc": "2.0", "id": self._rpc_ids, "method": method, "params": params}
        reply = (await self._request({"type": "mcp", "data": request}, reconnect=False))["data"]
        if "error" in reply:
            err = reply["error"]
            failed = f"MCP {method} failed ({err.get('code')}): {err.get('message')}"
            raise ExecutionError(failed, rpc_code=err.get("code"))
        return reply["result"]

    async def list_tools(self) -> list[dict[str, Any]]:
        """The environment's MCP tools: name, description and JSON input schema of each."""
        return (await self._rpc("tools/list", {}))["tools"]

    async def call_tool(self, name: str, /, **arguments: Any) -> ToolResult:
        """Call one MCP tool; `name` is positional-only so a tool may take an argument called `name`."""
        result = await self._rpc("tools/call", {"name": name, "arguments": arguments})
        text = "".join(c.get("text", "") for c in result.get("content", []) if c.get("type") == "text")
        return ToolResult(text=text, is_error=bool(result.get("isError")), structured=result.get("structuredContent"))

    def _result(self, data: dict[str, Any]) -> StepResult[Any]:
        obs = data.get("observation", {})
        if self.observation_type is not None:
            obs = self.observation_type.model_validate(obs)
        return StepResult(obs, data.get("reward"), bool(data.get("done", False)), data.get("metadata") or {})


def action_data(action: dict[str, Any] | BaseModel) -> dict[str, Any]:
    """An action as the wire carries it."""
    return action.model_dump(mode="json") if isinstance(action, BaseModel) else action


def reset_data(seed: int | None, episode_id: str | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    data = dict(kwargs)
    if seed is not None:
        data["seed"] = seed
    if episode_id is not None:
        data["episode_id"] = episode_id
    return data


def error_from_frame(data: dict[str, Any], *, request: str | None) -> EnvError:
    """The typed error for a server's error frame; `request` names the message it answered (None: unasked)."""
    message = str(data.get("message", "unknown server error"))
    try:
        code = ErrorCode(data.get("code"))
    except ValueError:
        return ExecutionError(f"{message} (unrecognised code {data.get('code')!r})", request=request)
    fields = {k: v for k, v in data.items() if k not in ("message", "code")} | {"request": request}
    if code is ErrorCode.EXECUTION_ERROR and fields.get("timeout"):
        return StepTimeoutError(message, **fields)
    return ERROR_TYPES[code](message, **fields)
