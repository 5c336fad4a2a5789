"""The environment server: OpenEnv's wire protocol on asyncio, over TCP or a Unix socket.

    connection ──HTTP──► /health /schema /metadata /metrics /mcp   (one request at a time)
              ├─HTTP──► /claim: a claimable server's token, set once by its first caller
              ├─HTTP──► /reset /step /state /close (/mcp) on a session named by a header
              │         (the HTTP session binding, `envs.server.http_sessions`)
              └─upgrade /ws──► Session: one environment instance, messages in order
                                reset / step / state / mcp / close ──► replies

Every connection is an `asyncio.Protocol`; a WebSocket session (`envs.server.ws_session`)
runs one task that takes its messages from an inbox in arrival order, so a slow step never
reorders replies and a bad message gets an error reply while the session lives on. The bearer
token is checked before the upgrade, so a refused client never costs an environment
instance. A reaper closes sessions and connections idle past `idle_timeout_s` (OpenEnv issue
#1000: leaked half-open sessions must not fill every slot).

Before authentication a client costs little and holds nothing long: a route and its token
are judged from the request head, before any body is read; a connection must finish each
request within `header_timeout_s`; connections are capped, and at the cap the oldest one
still without a session makes room. A client that does not read its replies stops being
read (write-side back-pressure), so neither pipelined requests nor a ping flood grow the
server's memory.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import json
import logging
import os
import resource
import ssl as ssl_module
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from envs.authoring.registry import class_path
from envs.server.http_sessions import HttpBinding
from envs.server.inline import InlineCalls
from envs.server.messages import error_frame
from envs.server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from envs.server.metrics import EnvCallStats
from envs.server.runtime import EnvRuntime
from envs.server.sessions import Session, SessionTable
from envs.server.ws_session import WebSocketSession
from envs.wire import http
from envs.wire import websocket as ws
from envs.wire.http import ENV_TOKEN_HEADER
from hillclimb.errors import ErrorCode

log = logging.getLogger("hillclimb.envs.server")

_MAX_QUEUED = 32  # pipelined HTTP requests read ahead of their answers before the server stops reading
_LINGER_S = 2.0  # how long a refused connection's remaining input is read and dropped


class ServerConfig(BaseModel):
    """Limits of one environment server."""

    model_config = ConfigDict(extra="forbid")

    max_sessions: int = Field(default=64, ge=1)
    """Concurrent WebSocket sessions; an environment that does not support concurrent sessions gets 1."""
    idle_timeout_s: float | None = Field(default=300.0, gt=0)
    """Seconds without a message after which a session (or a connection) is closed. None disables reaping."""
    step_timeout_s: float | None = Field(default=120.0, gt=0)
    """Seconds one reset, step or MCP request may run; past it the session is closed. None means no limit."""
    inline_sync_calls: bool = True
    """Run a synchronous environment's reset and step on the event loop once they have proven
    short (envs.server.inline); False keeps every one on its session's thread."""
    max_message_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    """Largest accepted message; a larger one is answered with VALIDATION_ERROR and skipped."""
    max_connections: int = Field(default=512, ge=2)
    """Open connections at once (at most the open-file limit leaves room for); past it, the oldest
    connection without a session is closed to make room, else the new one is refused."""
    header_timeout_s: float = Field(default=10.0, gt=0)
    """Seconds an HTTP connection may take to send a complete request (and to send the next
    one, on keep-alive); past it the connection is closed."""
    http_sessions: Literal["keyed", "single"] = "keyed"
    """How the HTTP session binding finds a request's session: by its `Hillclimb-Session` header
    (`keyed`), or, where the ingress routes each session to its own sandbox, the server's one
    session whatever the request carries (`single`, e.g. an Azure Container Apps session pool)."""


_METHODS = {"/mcp": "POST", "/reset": "POST", "/step": "POST", "/close": "POST", "/claim": "POST"}
"""The routes that take a body or change state, and so POST; the others take GET (/ws, the
upgrade, says so itself)."""
_ROUTES = frozenset({"/health", "/ws", "/schema", "/metadata", "/metrics", "/state", *_METHODS})
_OPEN_ROUTES = frozenset({"/health", "/claim"})
"""Answered without the token: /claim checks its own."""
OPEN_ROUTE_MAX_BODY = 1024
"""The most body a route open before authentication reads: a claim is a token, in its header."""


def _presented_token(headers: dict[str, str]) -> bytes | None:
    """The token in its own header when the client sent one there (a platform in front holds
    `Authorization`), else as the `Authorization` bearer token."""
    presented = headers.get(ENV_TOKEN_HEADER.lower())
    if presented is None:
        scheme, _, presented = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return None
    return presented.strip().encode() or None


def _open_file_room(reserve: int = 32) -> int:
    """Connections the open-file limit leaves room for, after the server's own descriptors."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(soft - reserve, 2) if soft != resource.RLIM_INFINITY else 1 << 20


class EnvServer:
    """Serves one environment class; `start_tcp` or `start_unix`, then `serve_forever`."""

    def __init__(
        self, runtime: EnvRuntime, config: ServerConfig | None = None, *, token: str | None, claimable: bool = False
    ) -> None:
        """`token=None` turns auth off, unless `claimable`: then the first `POST /claim` sets the
        token (a platform that starts servers before any sandbox is asked for, as a session pool
        does, cannot hand each one a token; the claim comes before any agent command can run)."""
        self.runtime = runtime
        self.config = config or ServerConfig()
        if token == "":  # an unset variable read as "" must not switch auth off
            raise ValueError("the bearer token is empty: pass a real token, or token=None to turn auth off")
        if claimable and token is not None:
            raise ValueError("a claimable server takes its token from the claim, not from its start")
        self._token = token.encode() if token is not None else None
        self.claimable = claimable
        self._unclaimed = claimable
        capacity = self.config.max_sessions if runtime.concurrent else 1
        if capacity < self.config.max_sessions:
            log.info("%s does not support concurrent sessions: capacity is 1", runtime.name)
        self.env_stats = EnvCallStats()
        self.inline = InlineCalls(self.config.step_timeout_s) if self.config.inline_sync_calls else None
        self.sessions = SessionTable(runtime, capacity, self.env_stats, self.inline)
        self._connections: dict[_Connection, None] = {}  # in arrival order: the oldest first
        self.max_connections = min(self.config.max_connections, _open_file_room())
        self._servers: list[asyncio.base_events.Server] = []
        self._reaper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # sessions and POST /mcp requests still running
        self._schema_body: bytes | None = None
        self.http = HttpBinding(
            self.sessions,
            env_name=runtime.name,
            step_timeout_s=self.config.step_timeout_s,
            single=self.config.http_sessions == "single",
        )

    # -- lifecycle ---------------------------------------------------------------

    async def start_tcp(
        self, host: str = "127.0.0.1", port: int = 0, *, ssl: ssl_module.SSLContext | None = None
    ) -> int:
        """Listen on TCP (TLS with `ssl`: clients then use wss:// or https://); returns the port."""
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Connection(self), host, port, ssl=ssl)
        self._servers.append(server)
        self._start_reaper()
        return server.sockets[0].getsockname()[1]

    async def start_unix(self, path: str) -> None:
        if os.path.exists(path):
            os.unlink(path)
        loop = asyncio.get_running_loop()
        server = await loop.create_unix_server(lambda: _Connection(self), path)
        self._servers.append(server)
        self._start_reaper()

    async def serve_forever(self) -> None:
        await asyncio.gather(*(s.serve_forever() for s in self._servers))

    async def close(self) -> None:
        if self._reaper:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
        for server in self._servers:
            server.close()
        connections = list(self._connections)
        for conn in connections:
            conn.shutdown(ws.CLOSE_GOING_AWAY, "server shutting down")
        # Cancel what still runs (a session mid-step, even one whose client is gone; a POST /mcp)
        # so that every environment instance is closed before close() returns.
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for session in [s for s in self.sessions.values() if s.conn is None]:  # the HTTP binding's
            self.sessions.release(session)
        for server in self._servers:
            await server.wait_closed()

    # -- sessions ----------------------------------------------------------------

    def authorized(self, headers: dict[str, str]) -> bool:
        if self._unclaimed:
            return False
        if self._token is None:
            return True
        presented = _presented_token(headers)
        return presented is not None and hmac.compare_digest(presented, self._token)

    def claim(self, headers: dict[str, str]) -> None:
        """Take the presented token as this server's, once; the same token again is a retried claim."""
        if not self.claimable:
            raise http.HTTPError(404, "this server was started with its token: it takes no claim")
        presented = _presented_token(headers)
        if presented is None:
            raise http.HTTPError(401, "a claim presents the token to take")
        if self._unclaimed:
            self._token, self._unclaimed = presented, False
            log.info("claimed: serving the claimant's token from now on")
        elif not hmac.compare_digest(presented, self._token or b""):
            raise http.HTTPError(409, "already claimed")

    def schema_body(self) -> bytes:
        if self._schema_body is None:
            self._schema_body = json.dumps(self.runtime.schema()).encode()
        return self._schema_body

    # -- idle reaping and step deadlines ---------------------------------------------

    def _start_reaper(self) -> None:
        limits = [t for t in (self.config.idle_timeout_s, self.config.step_timeout_s) if t is not None]
        if self._reaper is None:
            shortest = min([*limits, self.config.header_timeout_s])
            self._reaper = asyncio.get_running_loop().create_task(self._watch_forever(shortest))

    async def _watch_forever(self, shortest_limit: float) -> None:
        """Reap idle connections and end late steps. One timer for the whole server, rather
        than one per step: a deadline is honoured within a quarter of its length."""
        interval = min(max(shortest_limit / 4, 0.01), 5.0)
        idle = self.config.idle_timeout_s
        while True:
            await asyncio.sleep(interval)
            try:
                now = time.monotonic()
                if idle is not None:
                    self.reap_idle(now - idle)
                    self.http.reap_idle(now - idle)
                self.close_slow_requests(now - self.config.header_timeout_s)
                self.expire_late_steps(now)
            except Exception:  # the watchdog must outlive any one bad connection
                log.exception("idle reaping failed")

    def expire_late_steps(self, now: float) -> None:
        for session in list(self.sessions.values()):
            if session.conn is not None and session.deadline is not None and now >= session.deadline:
                session.conn.expire_step()

    def reap_idle(self, cutoff: float) -> int:
        reaped = 0
        for conn in list(self._connections):
            if conn.idle_since(cutoff):
                conn.reap(self.config.idle_timeout_s or 0)
                reaped += 1
        return reaped

    def close_slow_requests(self, cutoff: float) -> None:
        for conn in list(self._connections):
            if conn.waiting_for_request_since(cutoff):
                conn.abort()

    def admit(self, conn: _Connection) -> bool:
        """Track a new connection; at the cap, close the oldest without a session for it, or refuse it."""
        if len(self._connections) >= self.max_connections:
            victim = next((c for c in self._connections if c.session is None and c is not conn), None)
            if victim is None:
                return False
            victim.abort()
        self._connections[conn] = None
        return True

    def forget(self, conn: _Connection) -> None:
        self._connections.pop(conn, None)

    def spawn(self, work: Any) -> asyncio.Task[None]:
        """Run a connection's coroutine as a task the server holds until it ends (the loop only keeps weak refs)."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


class _Connection(asyncio.Protocol):
    """One client connection: HTTP requests until it upgrades to a WebSocket session."""

    def __init__(self, server: EnvServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self._requests = http.RequestReader(self._refuse_early, max_body_bytes=server.config.max_message_bytes)
        # Requests read and not yet answered, in order; a refusal takes its request's place.
        self._queued: collections.deque[http.Request | http.HTTPError] = collections.deque()
        self.ws: WebSocketSession | None = None
        """The session, once the connection is upgraded."""
        self._http_busy = False
        self._closing = False
        self._last_active = time.monotonic()
        self._drain_waiter: asyncio.Future[None] | None = None
        self._inbox_full = False  # reading paused: the session (before an upgrade: the HTTP routes) lags behind
        self._writes_blocked = False  # reading paused: the client has not read its replies
        self._discarding = False  # refused: what still arrives is dropped unread
        self._request_since = time.monotonic()  # since when an HTTP connection awaits its next request

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if not self.server.admit(self):
            self._closing = True
            transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self.server.forget(self)
        if self.ws is not None:
            self.ws.push(None)
        if self._drain_waiter and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    def pause_writing(self) -> None:
        self._drain_waiter = asyncio.get_running_loop().create_future()
        self._writes_blocked = True
        self._update_reading()

    def resume_writing(self) -> None:
        if self._drain_waiter and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)
        self._drain_waiter = None
        self._writes_blocked = False
        self._update_reading()
        if self.ws is None:
            self._serve_http()  # requests already read wait for room to answer them

    def _update_reading(self) -> None:
        """Read from the client only while it reads our replies and its session keeps up."""
        if self.transport is None or self._closing:
            return
        if self._writes_blocked or self._inbox_full:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        self._last_active = time.monotonic()
        if self.ws is not None:
            self.ws.feed(data)
            return
        self._read_http(data)
        self._serve_http()

    # -- what the WebSocket session sees of it (ws_session.Link) --------------------------

    @property
    def session(self) -> Session | None:
        return self.ws.session if self.ws is not None else None

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def reading_held(self) -> bool:
        return self._inbox_full

    def hold_reading(self, held: bool) -> None:
        self._inbox_full = held
        self._update_reading()

    async def drained(self) -> None:
        if self._drain_waiter is not None:
            await self._drain_waiter

    def touch(self, now: float) -> None:
        self._last_active = now

    # -- reaping and shutdown --------------------------------------------------------

    def idle_since(self, cutoff: float) -> bool:
        if self.session is not None and self.session.busy:
            return False
        return self._last_active < cutoff and not self._closing

    def waiting_for_request_since(self, cutoff: float) -> bool:
        """An HTTP connection that has waited since before `cutoff` for a complete request."""
        waiting = self.ws is None and not self._http_busy and not self._closing
        return waiting and self._request_since < cutoff

    def abort(self) -> None:
        if self.transport is not None and not self._closing:
            self._closing = True
            self.transport.abort()

    def reap(self, timeout: float) -> None:
        if self.ws is not None and self.ws.session is not None:
            log.info("reaping session %s after %.0f s idle", self.ws.session.id, timeout)
            notice = f"session closed after {timeout:g} s without a message"
            self.ws.send_json(error_frame(ErrorCode.SESSION_ERROR, notice))
        self.shutdown(ws.CLOSE_GOING_AWAY, "idle timeout")

    def shutdown(self, code: int, reason: str) -> None:
        if self.transport is None or self._closing:
            return
        self._closing = True
        if self.ws is not None:
            self.transport.write(ws.encode_frame(ws.OP_CLOSE, ws.close_payload(code, reason), mask=False))
        self.transport.close()
        # A half-open peer never acknowledges; do not let its socket linger.
        asyncio.get_running_loop().call_later(5.0, self.transport.abort)
        if self.ws is not None:
            self.ws.push(None)

    # -- HTTP --------------------------------------------------------------------------

    def _read_http(self, data: bytes) -> None:
        if self._queued and isinstance(self._queued[-1], http.HTTPError):
            return  # nothing after a refused request is read
        try:
            self._queued += self._requests.feed(data)
        except http.HTTPError as e:
            self._queued.append(e)
        if self._http_busy and len(self._queued) > _MAX_QUEUED and not self._inbox_full:
            self._inbox_full = True  # a pipelining client waits until its earlier requests are answered
            self._update_reading()

    def _serve_http(self) -> None:
        while self._queued and not self._http_busy and not self._closing and not self._writes_blocked:
            item = self._queued.popleft()
            if self._inbox_full and not self._queued:
                self._inbox_full = False
                self._update_reading()
            try:
                if isinstance(item, http.HTTPError):
                    raise item
                self._request_since = time.monotonic()  # the next one's time starts now
                self._route(item)
            except http.HTTPError as e:
                challenge = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
                self._refuse(http.json_response(e.status, {"error": e.message}, challenge))
                return
            except Exception as e:  # e.g. /metadata with a failing factory: answer, never drop the connection
                log.exception("HTTP request failed")
                self._respond_and_close(http.json_response(500, {"error": f"{type(e).__name__}: {e}"}))
                return

    def _refuse_early(self, req: http.Request) -> None:
        """Judge a request by its head, before reading (or buffering) any of its body."""
        if req.path not in _ROUTES:
            if req.content_length:  # without one, the connection can stay open for the next request
                raise http.HTTPError(404, f"no route {req.path}")
            return
        if req.path in _OPEN_ROUTES and req.content_length > OPEN_ROUTE_MAX_BODY:
            raise http.HTTPError(413, f"{req.path} reads no body over {OPEN_ROUTE_MAX_BODY} bytes")
        if req.path not in _OPEN_ROUTES and not self.server.authorized(req.headers):
            raise http.HTTPError(401, "missing or wrong bearer token")
        if req.content_length and req.path not in _METHODS:
            raise http.HTTPError(400, f"{req.path} takes no request body")

    def _route(self, req: http.Request) -> None:
        """Answer a complete request; `_refuse_early` has checked its route and token."""
        if req.path == "/health":
            return self._respond(req, http.json_response(200, {"status": "healthy"}))
        if req.path not in _ROUTES:
            return self._respond(req, http.json_response(404, {"error": f"no route {req.path}"}))
        if req.path == "/ws":
            return self._upgrade(req)
        expected = _METHODS.get(req.path, "GET")
        if req.method != expected:
            body = {"error": f"{req.path} takes {expected}"}
            return self._respond(req, http.json_response(405, body, {"Allow": expected}))
        if req.path == "/claim":
            self.server.claim(req.headers)
            body = {"claimed": True, "env": class_path(self.server.runtime.env_cls)}  # the claimant checks it
            return self._respond(req, http.json_response(200, body))
        if req.path == "/schema":
            schema = self.server.schema_body()
            return self._respond(req, http.render_response(200, schema, {"Content-Type": "application/json"}))
        if req.path == "/metadata":
            return self._respond(req, http.json_response(200, self.server.runtime.metadata))
        if req.path == "/metrics":
            body = self.server.env_stats.render(len(self.server.sessions), self.server.sessions.capacity)
            return self._respond(req, http.render_response(200, body, {"Content-Type": METRICS_CONTENT_TYPE}))
        self._http_busy = True
        self.server.spawn(self._answer_later(req, self.server.http.serve(req)))

    def _respond(self, req: http.Request, payload: bytes) -> None:
        if req.keep_alive:
            self.write(payload)
        else:
            self._respond_and_close(payload)

    def _refuse(self, payload: bytes) -> None:
        """Answer, then close without reading what the client still sends (a body we refused):
        the rest is discarded as it arrives, for at most `_LINGER_S`, so that the reply is not
        lost to a connection reset over unread data."""
        self.write(payload)
        self._closing = self._discarding = True
        self._queued.clear()
        if self.transport is not None:
            if self.transport.can_write_eof():
                self.transport.write_eof()
            asyncio.get_running_loop().call_later(_LINGER_S, self.transport.abort)

    def _respond_and_close(self, payload: bytes) -> None:
        self.write(payload)
        self._closing = True
        if self.transport is not None:
            self.transport.close()

    def write(self, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(payload)

    async def _answer_later(self, req: http.Request, reply: Any) -> None:
        """Send the reply an async route computes, then go on with the connection's next request."""
        try:
            self._respond(req, await reply)
        finally:
            self._http_busy = False
            self._request_since = time.monotonic()
        self._serve_http()

    # -- WebSocket ---------------------------------------------------------------------

    def _upgrade(self, req: http.Request) -> None:
        key = req.headers.get("sec-websocket-key")
        upgrading = self._requests.upgraded is not None  # "Connection: Upgrade" and "Upgrade" both sent
        if req.method != "GET" or not upgrading or "websocket" not in req.headers.get("upgrade", "").lower() or not key:
            body = {"error": "/ws needs a WebSocket upgrade"}
            return self._respond_and_close(http.json_response(426, body, {"Upgrade": "websocket"}))
        if req.headers.get("sec-websocket-version") != "13":
            body = {"error": "WebSocket version 13 required"}
            return self._respond_and_close(http.json_response(426, body, {"Sec-WebSocket-Version": "13"}))
        headers = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Accept": ws.accept_key(key)}
        self.write(http.render_response(101, headers=headers))
        config = self.server.config
        self.ws = WebSocketSession(
            self,
            self.server.sessions,
            env_name=self.server.runtime.name,
            step_timeout_s=config.step_timeout_s,
            max_message_bytes=config.max_message_bytes,
        )
        self.ws.start(self.server.spawn)
        leftover = self._requests.upgraded
        if leftover:
            self.ws.feed(leftover)
