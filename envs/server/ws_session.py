"""One WebSocket session on a connection: frames in, messages handled in arrival order, replies out.

    connection ──bytes──► feed(): frames ──► inbox ──► one task: a message at a time ──► replies
                            (a ping is answered at once, a close ends the session)

The session takes a slot of the server's (`envs.server.sessions`) at the upgrade, or is refused
with CAPACITY_REACHED; it creates its environment instance in its task, so that a slow factory
holds up no other connection. A bad message gets an error reply and the session lives on. Past
`_MAX_INBOX` queued messages the connection stops reading from the client until the session has
caught up. A reset or step past the step deadline is cancelled by the server's watchdog
(`expire_step`), and the session is closed: its state is unknown.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import orjson

from envs.server.inline import StepOverrun
from envs.server.messages import StepDeadline, env_error_frame, error_frame, run_message
from envs.server.sessions import Session, SessionTable
from envs.wire import websocket as ws
from hillclimb.errors import CapacityReachedError, EnvError, ErrorCode, FactoryError

log = logging.getLogger("hillclimb.envs.server")

_MAX_INBOX = 32  # queued messages per session before the server stops reading from it


class Link(Protocol):
    """The connection a session runs on, as the session sees it."""

    @property
    def closing(self) -> bool:
        """The connection is going: nobody will read a reply."""

    @property
    def reading_held(self) -> bool:
        """Reading from the client is paused for a full inbox."""

    def hold_reading(self, held: bool) -> None:
        """Pause (or resume) reading from the client, for a full inbox."""

    def write(self, payload: bytes) -> None: ...

    def shutdown(self, code: int, reason: str) -> None:
        """Send a close frame and close the connection."""

    async def drained(self) -> None:
        """Return once the client has read enough of our replies to take more."""

    def touch(self, now: float) -> None:
        """The session did something at `now`: the connection is not idle."""


class WebSocketSession:
    """The session of one upgraded connection; `start`, then `feed` it what the client sends."""

    def __init__(
        self,
        link: Link,
        sessions: SessionTable,
        *,
        env_name: str,
        step_timeout_s: float | None,
        max_message_bytes: int,
    ) -> None:
        self.link = link
        self._sessions = sessions
        self._env_name = env_name
        self._step_timeout_s = step_timeout_s
        self._max_message_bytes = max_message_bytes
        self._frames = ws.FrameReader(max_message_bytes=max_message_bytes, expect_masked=True)
        self.session: Session | None = None
        self._task: asyncio.Task[None] | None = None
        self._inbox: collections.deque[tuple[int, bytes] | None] = collections.deque()
        self._inbox_waiter: asyncio.Future[None] | None = None
        # Kept, not asked for per message: asyncio.get_running_loop() makes a getpid system call.
        self._loop = asyncio.get_running_loop()

    def start(self, spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]]) -> None:
        """Take a slot and run the session as a task of `spawn`'s; at capacity, refuse and close."""
        try:
            self._sessions.reserve()
        except CapacityReachedError as e:
            usage = {"active_sessions": e.active_sessions, "max_sessions": e.max_sessions}
            self.send_json(error_frame(ErrorCode.CAPACITY_REACHED, str(e), **usage))
            return self.link.shutdown(ws.CLOSE_POLICY_VIOLATION, "capacity reached")
        self._task = spawn(self._run())

    def feed(self, data: bytes) -> None:
        """Bytes from the client: pings answered, a close honoured, messages queued for the session."""
        try:
            messages = self._frames.feed(data)
        except ws.FrameError as e:
            log.info("closing connection after a framing error: %s", e)
            return self.link.shutdown(e.close_code, str(e))
        for opcode, payload in messages:
            if opcode == ws.OP_PING:
                self.link.write(ws.encode_frame(ws.OP_PONG, payload, mask=False))
            elif opcode == ws.OP_CLOSE:
                code, _ = ws.parse_close_payload(payload)
                self.link.shutdown(ws.close_reply_code(code), "")
            elif opcode != ws.OP_PONG:
                self.push((opcode, payload))

    def push(self, item: tuple[int, bytes] | None) -> None:
        """Queue a message; None: the connection is closing, the session ends."""
        self._inbox.append(item)
        waiter = self._inbox_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if len(self._inbox) > _MAX_INBOX and not self.link.reading_held:
            self.link.hold_reading(True)

    async def _next_message(self) -> tuple[int, bytes] | None:
        if self.link.closing:  # nobody can read a reply; and after a step timeout the state is unknown
            return None
        while not self._inbox:
            self._inbox_waiter = self._loop.create_future()
            await self._inbox_waiter
            self._inbox_waiter = None
        if self.link.reading_held and len(self._inbox) <= _MAX_INBOX // 2:
            self.link.hold_reading(False)
        return self._inbox.popleft()

    def send_json(self, payload: dict[str, Any]) -> None:
        self.link.write(ws.encode_frame(ws.OP_TEXT, orjson.dumps(payload, option=orjson.OPT_NON_STR_KEYS), mask=False))

    async def _run(self) -> None:
        try:
            self.session = self._sessions.open(self)
        except FactoryError as e:
            self.send_json(error_frame(ErrorCode.FACTORY_ERROR, str(e), factory_name=self._env_name))
            return self.link.shutdown(ws.CLOSE_INTERNAL_ERROR, "environment factory failed")
        session = self.session
        try:
            while True:
                message = await self._next_message()
                if message is None:
                    return
                reply = await self._handle(session, message)
                if reply is not None:
                    self.send_json(reply)
                await self.link.drained()
        except Exception as e:
            log.exception("session %s failed", session.id)
            self.send_json(error_frame(ErrorCode.SESSION_ERROR, f"session failed: {type(e).__name__}: {e}"))
            self.link.shutdown(ws.CLOSE_INTERNAL_ERROR, "session failed")
        finally:
            self._sessions.release(session)

    async def _handle(self, session: Session, message: tuple[int, bytes]) -> dict[str, Any] | None:
        opcode, payload = message
        if opcode == ws.OVERSIZED:
            limit = self._max_message_bytes
            skipped = f"message of {payload.decode()} bytes exceeds the limit of {limit} bytes; it was skipped"
            return error_frame(ErrorCode.VALIDATION_ERROR, skipped)
        try:
            parsed = orjson.loads(payload)
        except (ValueError, RecursionError) as e:  # RecursionError: nesting deeper than the parser's stack
            return error_frame(ErrorCode.INVALID_JSON, f"invalid JSON: {type(e).__name__}: {e}")
        if not isinstance(parsed, dict):
            got = type(parsed).__name__
            return error_frame(ErrorCode.VALIDATION_ERROR, f"a message must be a JSON object, got {got}")
        kind = parsed.get("type")
        session.busy = True
        try:
            if kind == "close":
                self.link.shutdown(ws.CLOSE_NORMAL, "closed by client")
                return None
            data = parsed.get("data", {})
            return await run_message(session.runner, self._env_name, kind, data, self._bounded)
        except EnvError as e:
            return env_error_frame(e)
        except StepDeadline:
            limit = self._step_timeout_s
            late = f"{kind} ran past the step timeout of {limit:g} s; the session is closed: its state is unknown"
            self.send_json(error_frame(ErrorCode.EXECUTION_ERROR, late, timeout=True))
            self.link.shutdown(ws.CLOSE_INTERNAL_ERROR, "step timeout")
            return None
        except Exception as e:
            return error_frame(ErrorCode.EXECUTION_ERROR, f"{kind} failed: {type(e).__name__}: {e}")
        finally:
            session.busy = False
            session.last_active = time.monotonic()
            self.link.touch(session.last_active)

    def expire_step(self) -> None:
        """Called by the server's watchdog: the running reset or step is past its deadline."""
        if self.session is not None and self._task is not None and not self.session.timed_out:
            self.session.timed_out = True
            self._task.cancel()

    async def _bounded(self, work: Any) -> Any:
        """`work` held to the step deadline (the server's watchdog cancels it: `expire_step`)."""
        limit = self._step_timeout_s
        session = self.session
        if limit is None or session is None:
            return await work
        session.deadline = time.monotonic() + limit
        try:
            return await work
        except StepOverrun:  # an inline call, cut by the watchdog: the loop could not cancel it
            session.timed_out = True
            raise StepDeadline from None
        except asyncio.CancelledError:
            if not session.timed_out:
                raise
            task = asyncio.current_task()
            assert task is not None
            if task.uncancel():  # cancelled by another too (the server closing): that one goes on
                raise
            raise StepDeadline from None  # the cancellation was ours alone: a timeout error answers it
        finally:
            session.deadline = None
