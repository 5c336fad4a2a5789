"""`HttpEnvClient`: `EnvClient`'s API over the HTTP session binding (`envs.server.http_sessions`).

    async with HttpEnvClient("https://pool.example/env?identifier=s1", credentials=creds, ssl=ctx) as env:
        await env.reset(seed=0)
        await env.step({"command": "ls"})

For an ingress that carries no WebSocket. Each call is one HTTP request on a kept-alive
connection; the session is named by the `Hillclimb-Session` header the first reset
answered with. Credentials are rendered for every request, so a refreshing source's new
token is used as soon as it has one. A kept connection the server (or a proxy) closed
while idle is replaced once, only when not a byte of the reply arrived: the request was
then never served, so sending it again cannot run a step twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl as ssl_module
from typing import Any

import orjson
from pydantic import BaseModel

from envs.client.base import BaseEnvClient, Endpoint, StepResult, action_data, error_from_frame, reset_data
from envs.client.credentials import Credential, render_headers
from envs.client.unix_socket import connect_unix
from envs.deadline import within
from envs.wire import http
from envs.wire.http import SESSION_HEADER
from hillclimb.errors import (
    AuthenticationError,
    ConnectionLostError,
    MessageTimeoutError,
    MessageValidationError,
    SessionError,
)

_CLOSE_WAIT_S = 2.0
_HEAD_LIMIT = 64 * 1024
_READ_BYTES = 256 * 1024


class _Stale(Exception):
    """A kept-alive connection was closed before any of the reply came."""


class _Channel:
    """One HTTP/1.1 connection, one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, max_bytes: int) -> None:
        self.reader = reader
        self.writer = writer
        self.replies = http.ResponseReader(max_head_bytes=_HEAD_LIMIT, max_body_bytes=max_bytes)
        self.open = True

    async def exchange(self, request: bytes) -> tuple[int, dict[str, str], bytes]:
        replies: list[http.Response] = []
        replied = False  # any of the reply came: a kept-alive connection closed before is merely stale
        try:
            self.writer.write(request)
            while not replies:
                data = await self.reader.read(_READ_BYTES)
                if not data:
                    last = self.replies.finish()  # a body that ends with the connection
                    if last is not None:
                        replies.append(last)
                        break
                    if not replied:
                        raise _Stale
                    raise ConnectionLostError("the server hung up in the middle of a reply")
                replied = True
                replies = self.replies.feed(data)
        except (ConnectionResetError, BrokenPipeError):
            if replied:
                raise ConnectionLostError("the connection dropped in the middle of a reply") from None
            raise _Stale from None
        except http.HTTPError as e:
            raise ConnectionLostError(e.message) from None
        if len(replies) > 1:
            raise ConnectionLostError(f"the server sent {len(replies)} replies to one request")
        [reply] = replies
        self.open = reply.keep_alive
        return reply.status, reply.headers, reply.body

    def close(self) -> None:
        self.open = False
        self.writer.close()


async def _compose(
    endpoint: Endpoint,
    method: str,
    route: str,
    body: bytes,
    credentials: tuple[Credential, ...],
    headers: list[tuple[str, str]],
) -> bytes:
    """One request, head and body; the credentials rendered now (a refreshing source is asked each time)."""
    lines = [
        f"{method} {endpoint.target(route)} HTTP/1.1",
        f"Host: {endpoint.host_header}",
        f"Content-Length: {len(body)}",
    ]
    if body:
        lines.append("Content-Type: application/json")
    lines += [f"{name}: {value}" for name, value in [*headers, *await render_headers(credentials)]]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def _open_channel(endpoint: Endpoint, ssl: ssl_module.SSLContext | None, max_bytes: int) -> _Channel:
    if endpoint.uds:
        sock = await connect_unix(endpoint.uds)
        reader, writer = await asyncio.open_unix_connection(sock=sock)
    else:
        ctx = (ssl or ssl_module.create_default_context()) if endpoint.tls else None
        reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port, ssl=ctx)
    return _Channel(reader, writer, max_bytes)


class HttpEnvClient(BaseEnvClient):
    """Reset, step, state, MCP tools and close over plain HTTP requests."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        credentials: tuple[Credential, ...] = (),
        connect_timeout_s: float = 10.0,
        message_timeout_s: float | None = 300.0,
        max_message_bytes: int = 64 * 1024 * 1024,
        observation_type: type[BaseModel] | None = None,
        ssl: ssl_module.SSLContext | None = None,
    ) -> None:
        super().__init__(
            url,
            token=token,
            credentials=credentials,
            connect_timeout_s=connect_timeout_s,
            message_timeout_s=message_timeout_s,
            max_message_bytes=max_message_bytes,
            observation_type=observation_type,
            ssl=ssl,
        )
        self._channel: _Channel | None = None
        self.session_id: str | None = None
        """The server's name for this client's session; None before the first reset."""

    @property
    def connected(self) -> bool:
        return self._channel is not None and self._channel.open

    # -- connection ----------------------------------------------------------------------

    async def connect(self) -> None:
        """Open a connection, retrying refused or missing sockets until `connect_timeout_s`."""
        if not self.connected:
            self._channel = await self._connect_retrying(
                lambda time_left: within(time_left, _open_channel(self.endpoint, self._ssl, self.max_message_bytes))
            )

    def _drop(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    async def close(self) -> None:
        """End the session on the server (briefly waited for), then the connection."""
        try:
            if self.session_id is not None:
                # Gone already, or unreachable: then its idle timeout ends it.
                with contextlib.suppress(OSError, TimeoutError, SessionError, ConnectionLostError, AuthenticationError):
                    await within(_CLOSE_WAIT_S, self._call("POST", "/close", None, "close"))
        finally:
            self.session_id = None
            self._drop()

    # -- requests ----------------------------------------------------------------------

    async def _call(self, method: str, route: str, payload: Any, kind: str) -> Any:
        """One request; its JSON reply, or None for 202; a typed error for a failure."""
        body = orjson.dumps(payload, option=orjson.OPT_NON_STR_KEYS) if payload is not None else b""
        async with self._lock:
            try:
                async with asyncio.timeout(self.message_timeout_s):
                    status, headers, raw = await self._exchange(method, route, body)
            except TimeoutError:
                self._drop()  # the reply may still come: it must not answer the next request
                late = f"no reply to {kind!r} from {self.url} within {self.message_timeout_s:g} s"
                raise MessageTimeoutError(f"{late}; the connection was dropped") from None
            except BaseException:
                self._drop()
                raise
        if SESSION_HEADER.lower() in headers:
            self.session_id = headers[SESSION_HEADER.lower()]
        if 200 <= status < 300:
            return orjson.loads(raw) if raw else None
        raise self._failure(status, raw, kind)

    async def _exchange(self, method: str, route: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        session = [(SESSION_HEADER, self.session_id)] if self.session_id is not None else []
        request = await _compose(self.endpoint, method, route, body, self._credentials, session)
        for attempt in range(2):
            reused = self.connected
            if not reused:
                await self.connect()
            assert self._channel is not None
            try:
                reply = await self._channel.exchange(request)
            except _Stale:
                self._drop()
                if reused and attempt == 0:
                    continue  # closed while idle: the request was never read
                raise ConnectionLostError(f"{self.url} closed the connection before replying") from None
            if not self._channel.open:
                self._drop()
            return reply
        raise AssertionError("unreachable: the second attempt returns or raises")

    def _failure(self, status: int, raw: bytes, kind: str) -> Exception:
        try:
            reply = orjson.loads(raw)
        except ValueError:
            reply = None
        if isinstance(reply, dict) and reply.get("type") == "error":
            error = error_from_frame(reply.get("data") or {}, request=kind)
            if isinstance(error, SessionError) or getattr(error, "timeout", False):
                self.session_id = None  # the server closed it
            return error
        said = raw[:300].decode("utf-8", "replace")
        if status in (401, 403):
            return AuthenticationError(f"{self.url} refused the credentials (HTTP {status}): {said}")
        if status == 422 and isinstance(reply, dict) and isinstance(reply.get("detail"), list):  # OpenEnv's own
            return MessageValidationError(
                f"the server rejected the {kind}: {said}", errors=reply["detail"], request=kind
            )
        if status == 413:
            return MessageValidationError(
                f"the {kind} request was too large for the server (HTTP 413): {said}", errors=[]
            )
        return ConnectionLostError(f"HTTP {status} from {self.url} for {kind}: {said}")

    async def _request(self, message: dict[str, Any], *, reconnect: bool) -> dict[str, Any]:
        """An MCP message (what `BaseEnvClient`'s tool calls send): on the session when there is one."""
        reply = await self._call("POST", "/mcp", message["data"], message["type"])
        return {"type": message["type"], "data": reply}

    async def reset(self, seed: int | None = None, episode_id: str | None = None, **kwargs: Any) -> StepResult[Any]:
        """Start a new episode: on this client's session, or on a new one the server names (also
        when the old one was reaped or closed meanwhile: a reset loses nothing)."""
        data = reset_data(seed, episode_id, kwargs)
        had_session = self.session_id is not None
        try:
            return self._result(await self._call("POST", "/reset", data, "reset"))
        except SessionError:
            if not had_session:
                raise
            return self._result(await self._call("POST", "/reset", data, "reset"))

    async def send_reset(self, seed: int | None = None, episode_id: str | None = None, **kwargs: Any) -> None:
        """As `reset()`: over HTTP the reply is awaited (there is no pipelining to save a round trip)."""
        await self.reset(seed, episode_id, **kwargs)

    async def settle(self) -> None:
        """Nothing is ever left unread over HTTP."""

    async def step(self, action: dict[str, Any] | BaseModel) -> StepResult[Any]:
        return self._result(await self._call("POST", "/step", {"action": action_data(action)}, "step"))

    async def state(self) -> dict[str, Any]:
        return await self._call("GET", "/state", None, "state")


async def http_request(
    url: str,
    path: str,
    *,
    method: str = "GET",
    body: Any = None,
    token: str | None = None,
    credentials: tuple[Credential, ...] = (),
    timeout: float = 5.0,
    ssl: ssl_module.SSLContext | None = None,
    max_bytes: int = 64 * 1024 * 1024,
) -> tuple[int, Any]:
    """One HTTP request to a server's route (`/health`, `/schema`, `/metadata`, `/metrics`, `/mcp`)
    on a connection of its own, through the URL's path prefix and with its query string.

    Returns (status, body): the body parsed when it is JSON, else its text (`/metrics`)."""
    endpoint = Endpoint.parse(url)
    payload = orjson.dumps(body) if body is not None else b""
    credentials += (Credential.env_token(token),) if token else ()

    async def exchange() -> tuple[int, Any]:
        request = await _compose(endpoint, method, path, payload, credentials, [("Connection", "close")])
        channel = await _open_channel(endpoint, ssl, max_bytes)
        try:
            try:
                status, headers, raw = await channel.exchange(request)
            except _Stale:
                raise ConnectionLostError(f"{url} closed the connection before replying") from None
        finally:
            channel.close()
        if not raw:
            return status, None
        return status, orjson.loads(raw) if "json" in headers.get("content-type", "") else raw.decode()

    return await within(timeout, exchange())
