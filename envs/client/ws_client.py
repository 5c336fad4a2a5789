"""`EnvClient`: an async client for any server speaking OpenEnv's WebSocket protocol.

    async with EnvClient("unix:///run/env.sock", token=t) as env:
        result = await env.reset(seed=0)
        result = await env.step({"command": "ls"})

`token=` is the env server's bearer token; `credentials=` carries any others (a platform's
`Authorization`, the env token in its own header: see `envs.client.credentials`). `HttpEnvClient`
offers the same API over the HTTP session binding; `EnvHandle.client()` picks the one a
sandbox's transport needs.

URLs: `ws://`, `wss://`, `http(s)://` (rewritten to the `/ws` socket) and `unix:///path`.
A dropped connection never hangs a caller: a request in flight fails at once with
`ConnectionLostError`, keepalive pings detect a silent peer, and every reply has a
deadline. `reset()` reconnects on its own, since it starts a fresh episode anyway;
`step()` after a drop raises, because the episode's server-side state died with the
connection.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import ssl as ssl_module
import time
from typing import Any

import orjson
from pydantic import BaseModel

from envs.client.base import BaseEnvClient, StepResult, action_data, error_from_frame, reset_data
from envs.client.credentials import Credential, render_headers
from envs.deadline import within
from envs.wire import http
from envs.wire import websocket as ws
from hillclimb.errors import (
    AuthenticationError,
    ConnectionLostError,
    ErrorCode,
    HillclimbError,
    MessageTimeoutError,
)

_CLOSE_WAIT_S = 2.0  # how long close() waits for the server to hang up


class _Protocol(asyncio.Protocol):
    """One WebSocket connection: the handshake, then frames into an inbox of replies."""

    def __init__(self, request: bytes, key: str, max_message_bytes: int) -> None:
        self._request = request
        self._accept = ws.accept_key(key)
        self._max = max_message_bytes
        self.transport: asyncio.Transport | None = None
        # Kept, not asked for per reply: asyncio.get_running_loop() makes a getpid system call.
        self._loop = asyncio.get_running_loop()
        self.handshake: asyncio.Future[None] = self._loop.create_future()
        self._handshake_reply = http.ResponseReader(
            max_head_bytes=http.MAX_HEAD_BYTES, max_body_bytes=max_message_bytes
        )
        self._frames: ws.FrameReader | None = None
        self._inbox: collections.deque[bytes] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self.lost: HillclimbError | None = None
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self.last_rx = time.monotonic()
        self.ping_sent_at: float | None = None
        self.pending_since: float | None = None  # when the request now awaiting its reply was sent
        self._close_sent = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        self.last_rx = time.monotonic()
        if self._frames is None:
            self._read_handshake_reply(data)
            return
        try:
            messages = self._frames.feed(data)
        except ws.FrameError as e:
            self._fail(ConnectionLostError(f"server broke WebSocket framing: {e}"))
            return
        for opcode, payload in messages:
            if opcode in (ws.OP_TEXT, ws.OP_BINARY):
                self._inbox.append(payload)
                self._wake()
            elif opcode == ws.OVERSIZED:
                too_big = f"server sent a {payload.decode()}-byte message, over this client's limit of {self._max}"
                self._fail(ConnectionLostError(too_big))
            elif opcode == ws.OP_PING:
                self.send(ws.OP_PONG, payload)
            elif opcode == ws.OP_CLOSE:
                code, reason = ws.parse_close_payload(payload)
                if not self._close_sent:  # echo once (RFC 6455 5.5.1); ours may already be on its way
                    self.send(ws.OP_CLOSE, payload[:2])
                said = f"code {code}{': ' + reason if reason else ''}"
                self._fail(ConnectionLostError(f"server closed the connection ({said})", close_code=code))

    def _read_handshake_reply(self, data: bytes) -> None:
        try:
            replies = self._handshake_reply.feed(data)
        except http.HTTPError as e:
            return self._fail(ConnectionLostError(f"bad handshake reply: {e.message}"))
        if not replies:
            return
        reply = replies[0]
        if reply.status == 401:
            refused = "the server refused the bearer token (HTTP 401): pass token= the sandbox's token"
            return self._fail(AuthenticationError(refused))
        rest = self._handshake_reply.upgraded
        if reply.status != 101 or rest is None:
            refused = f"WebSocket upgrade refused: HTTP {reply.status}"
            return self._fail(ConnectionLostError(refused, status=reply.status))
        if reply.headers.get("sec-websocket-accept") != self._accept:
            return self._fail(ConnectionLostError("WebSocket upgrade answered with a wrong Sec-WebSocket-Accept"))
        self._frames = ws.FrameReader(max_message_bytes=self._max, expect_masked=False)
        self.handshake.set_result(None)
        if rest:
            self.data_received(rest)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionLostError(f"connection lost{': ' + str(exc) if exc else ''}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def _fail(self, error: HillclimbError) -> None:
        if self.lost is None:
            self.lost = error
        if not self.handshake.done():
            self.handshake.set_exception(self.lost)
            self.handshake.exception()  # mark retrieved: connect() re-raises from `lost`
        self._wake()
        if self.transport is not None:
            self.transport.close()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def send(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing() and not self._close_sent:
            self.transport.write(ws.encode_frame(opcode, payload, mask=True))
            if opcode == ws.OP_CLOSE:  # nothing may follow a close frame (RFC 6455 5.5.1)
                self._close_sent = True

    def session_notice(self) -> dict[str, Any] | None:
        """The SESSION_ERROR the server sent unasked before it hung up (reaped idle, say), if any."""
        for raw in reversed(self._inbox):
            try:
                message = json.loads(raw)
            except ValueError:
                continue
            data = message.get("data") if isinstance(message, dict) and message.get("type") == "error" else None
            if isinstance(data, dict) and data.get("code") == ErrorCode.SESSION_ERROR:
                return data
        return None

    async def receive(self) -> bytes:
        """The next reply. Its deadline is enforced by the client's heartbeat, not by a timer per request."""
        if self._inbox:
            return self._inbox.popleft()
        try:
            while not self._inbox:
                if self.lost is not None:
                    raise self.lost
                self._waiter = self._loop.create_future()
                await self._waiter
        finally:
            self._waiter = None
        return self._inbox.popleft()


class EnvClient(BaseEnvClient):
    """An async OpenEnv client over WebSocket: credentials, typed results and safe reconnects."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        credentials: tuple[Credential, ...] = (),
        connect_timeout_s: float = 10.0,
        message_timeout_s: float | None = 300.0,
        max_message_bytes: int = 64 * 1024 * 1024,
        ping_interval_s: float | None = 20.0,
        ping_timeout_s: float = 20.0,
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
        self.ping_interval_s = ping_interval_s
        self.ping_timeout_s = ping_timeout_s
        self._conn: _Protocol | None = None
        self._heartbeat: asyncio.TimerHandle | None = None
        self._episode_live = False
        self._unread_reset = False
        """A `send_reset()` was sent and its reply not yet read."""

    @property
    def connected(self) -> bool:
        return self._conn is not None and self._conn.lost is None

    # -- connection ----------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the WebSocket, retrying refused or missing sockets until `connect_timeout_s`."""
        if self.connected:
            return
        self._drop()
        self._conn = await self._connect_retrying(self._open)
        self._schedule_heartbeat()

    async def _open(self, timeout: float) -> _Protocol:
        key = ws.new_client_key()
        lines = [
            f"GET {self.endpoint.path} HTTP/1.1",
            f"Host: {self.endpoint.host_header}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        lines += [f"{name}: {value}" for name, value in await render_headers(self._credentials)]
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        protocol = _Protocol(request, key, self.max_message_bytes)
        transport = await self.endpoint.open(lambda: protocol, timeout, self._ssl)
        try:
            await within(timeout, asyncio.shield(protocol.handshake))
        except BaseException:
            transport.close()
            raise
        return protocol

    def _schedule_heartbeat(self) -> None:
        periods = []
        if self.ping_interval_s is not None:
            periods += [self.ping_interval_s, self.ping_timeout_s]
        if self.message_timeout_s is not None:  # a deadline is honoured within a quarter of its length
            periods.append(self.message_timeout_s / 4)
        if periods:
            self._heartbeat = asyncio.get_running_loop().call_later(max(min(periods), 0.005), self._beat)

    def _beat(self) -> None:
        """Ping after `ping_interval_s` of silence; give up only on a ping unanswered for `ping_timeout_s`.

        Judging by silence alone is wrong: a peer that answers every ping still looks silent
        for up to two periods between pings, so a late timer would drop a healthy connection.
        """
        conn = self._conn
        if conn is None or conn.lost is not None:
            return
        now = time.monotonic()
        if (
            conn.pending_since is not None
            and self.message_timeout_s is not None
            and now - conn.pending_since >= self.message_timeout_s
        ):
            conn._fail(MessageTimeoutError("no reply from the server in time"))
            return
        if self.ping_interval_s is None:
            self._schedule_heartbeat()
            return
        unanswered = conn.ping_sent_at is not None and conn.last_rx < conn.ping_sent_at
        if unanswered and now - conn.ping_sent_at >= self.ping_timeout_s:  # type: ignore[operator]
            conn._fail(ConnectionLostError(f"no reply to a keepalive ping within {self.ping_timeout_s:g} s"))
            return
        if not unanswered and now - conn.last_rx >= self.ping_interval_s:
            conn.send(ws.OP_PING, b"hc")
            conn.ping_sent_at = now
        self._schedule_heartbeat()

    def _drop(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            self._heartbeat = None
        if self._conn is not None and self._conn.transport is not None:
            self._conn.transport.close()
        self._conn = None
        self._unread_reset = False

    async def close(self) -> None:
        """Say goodbye to the server and wait (briefly) until it hangs up.

        The server frees the session before it closes the socket, so once this returns a
        server with one slot takes the next session without a race.
        """
        conn = self._conn
        try:
            if conn is not None and self.connected:
                conn.send(ws.OP_TEXT, b'{"type":"close"}')
                conn.send(ws.OP_CLOSE, ws.close_payload(ws.CLOSE_NORMAL))
                with contextlib.suppress(TimeoutError):
                    await within(_CLOSE_WAIT_S, asyncio.shield(conn.closed))
        finally:  # even when cancelled while waiting: never leave the socket or the heartbeat behind
            self._drop()
            self._episode_live = False

    # -- requests ----------------------------------------------------------------------

    async def _request(self, message: dict[str, Any], *, reconnect: bool) -> dict[str, Any]:
        async with self._lock:
            conn = await self._ready(reconnect=reconnect)
            _send_json(conn, message)
            sent_at = time.monotonic()
            if self._unread_reset:  # a pipelined reset's reply comes first
                await self._settle(conn)
            conn.pending_since = sent_at
            raw = await self._reply(conn, message["type"])
        reply = orjson.loads(raw)
        if reply.get("type") == "error":
            raise error_from_frame(reply.get("data") or {}, request=message["type"])
        return reply

    async def _ready(self, *, reconnect: bool) -> _Protocol:
        """The live connection; reconnects unless that would silently lose a live episode."""
        if not self.connected:
            if self._conn is not None and self._episode_live and not reconnect:
                raise self._episode_lost(self._conn) from self._conn.lost
            await self.connect()
        assert self._conn is not None
        return self._conn

    async def _reply(self, conn: _Protocol, kind: str) -> bytes:
        try:
            return await conn.receive()
        except MessageTimeoutError:
            raise MessageTimeoutError(
                f"no reply to {kind!r} from {self.url} within {self.message_timeout_s:g} s; the connection was dropped"
            ) from None
        except asyncio.CancelledError:
            # The reply may still come; left queued, it would answer the next request.
            cancelled = f"a {kind!r} request was cancelled before its reply; the connection was dropped"
            conn._fail(ConnectionLostError(cancelled))
            raise
        finally:
            conn.pending_since = None

    async def _settle(self, conn: _Protocol) -> None:
        """Read the pipelined reset's reply (the lock is held); raise its error if it failed."""
        self._unread_reset = False
        reply = orjson.loads(await self._reply(conn, "reset"))
        if reply.get("type") == "error":
            # Whatever was sent behind the reset ran on no fresh episode: its reply must never
            # be read as an answer, so the connection goes.
            self._drop()
            self._episode_live = False
            raise error_from_frame(reply.get("data") or {}, request="reset")

    @staticmethod
    def _episode_lost(conn: _Protocol) -> HillclimbError:
        hint = "the episode's server-side state is gone: call reset() to start a new one"
        notice = conn.session_notice()
        if notice is not None:  # the server said why (reaped idle, session failed): raise its SessionError
            return error_from_frame({**notice, "message": f"{notice.get('message')}; {hint}"}, request=None)
        return ConnectionLostError(f"{conn.lost}; {hint}")

    async def reset(self, seed: int | None = None, episode_id: str | None = None, **kwargs: Any) -> StepResult[Any]:
        """Start a new episode; reconnects first if the connection had dropped."""
        self._episode_live = False
        reply = await self._request({"type": "reset", "data": reset_data(seed, episode_id, kwargs)}, reconnect=True)
        self._episode_live = True
        return self._result(reply["data"])

    async def send_reset(self, seed: int | None = None, episode_id: str | None = None, **kwargs: Any) -> None:
        """Start a new episode without waiting for the reply: the next request reads it first.

        For callers that need nothing from the reset's observation (a rollout's prompt comes
        from its task): the first step goes out right behind the reset, one round trip less
        per episode. If the reset failed, the next request — or `settle()` — raises its error
        (with `request="reset"`) and the connection is dropped."""
        async with self._lock:
            if self._unread_reset and self.connected:  # an earlier send_reset() still unread: it is read first
                await self._settle(self._conn)  # type: ignore[arg-type]
            self._episode_live = False
            conn = await self._ready(reconnect=True)
            _send_json(conn, {"type": "reset", "data": reset_data(seed, episode_id, kwargs)})
            conn.pending_since = time.monotonic()
            self._unread_reset = True
            self._episode_live = True  # a drop from here on loses the episode: steps must not reconnect

    async def settle(self) -> None:
        """Read a `send_reset()` reply that no request has read yet; raise its error if it failed."""
        async with self._lock:
            if self._unread_reset:
                await self._settle(await self._ready(reconnect=False))

    async def step(self, action: dict[str, Any] | BaseModel) -> StepResult[Any]:
        reply = await self._request({"type": "step", "data": action_data(action)}, reconnect=False)
        self._episode_live = True  # even without reset(): the server now holds state a drop would lose
        return self._result(reply["data"])

    async def state(self) -> dict[str, Any]:
        reply = await self._request({"type": "state"}, reconnect=False)
        return reply["data"]


def _send_json(conn: _Protocol, message: dict[str, Any]) -> None:
    conn.send(ws.OP_TEXT, orjson.dumps(message, option=orjson.OPT_NON_STR_KEYS))
