"""The HTTP session binding: an episode over plain requests, for an ingress that carries no WebSocket.

    POST /reset  {"seed": 0, ...}          → {"observation", "reward", "done", "metadata"} + Hillclimb-Session: <id>
    POST /step   {"action": {...}}          → {"observation", "reward", "done", "metadata"}
    GET  /state                              → the environment's state
    POST /mcp    JSON-RPC                    → on the session's tools (without a session: a throwaway instance)
    POST /close                              → the session is gone

Bodies are OpenEnv's own (`ResetRequest`, `StepRequest`, `ResetResponse`, `StepResponse`),
so where OpenEnv's HTTP routes and these overlap a request means the same thing; unlike
OpenEnv's, a session lives from its /reset to its /close (or the idle timeout). Every later
request names it in the `Hillclimb-Session` header; under `http_sessions: single` (one
session per sandbox, the ingress routing by session) the header may be left out.

A session here is a session of the server like a WebSocket one: it takes a slot, is reaped
when idle, and holds reset, step and MCP calls to the step deadline (past it the session is
closed). Failures are the WebSocket error frames, with an HTTP status for the ingress's sake.
Requests on one session run one at a time, in arrival order.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import orjson

from envs.server import mcp
from envs.server.inline import StepOverrun
from envs.server.messages import StepDeadline, env_error_frame, error_frame, run_message
from envs.server.runtime import SessionRunner
from envs.server.sessions import Session, SessionTable
from envs.wire import http
from envs.wire.http import SESSION_HEADER
from hillclimb.errors import (
    CapacityReachedError,
    EnvError,
    ErrorCode,
    InvalidJSONError,
    MessageValidationError,
    SessionError,
)

log = logging.getLogger("hillclimb.envs.http_sessions")

_SESSION_KEY = SESSION_HEADER.lower()
_KINDS = {"/reset": "reset", "/step": "step", "/state": "state", "/mcp": "mcp", "/close": "close"}
_STATUS = {
    ErrorCode.INVALID_JSON: 400,
    ErrorCode.UNKNOWN_TYPE: 404,
    ErrorCode.VALIDATION_ERROR: 422,
    ErrorCode.EXECUTION_ERROR: 500,
    ErrorCode.CAPACITY_REACHED: 503,
    ErrorCode.FACTORY_ERROR: 500,
    ErrorCode.SESSION_ERROR: 404,
}


class HttpBinding:
    """The HTTP session binding of one `EnvServer`; its sessions are the server's (`sessions`)."""

    def __init__(self, sessions: SessionTable, *, env_name: str, step_timeout_s: float | None, single: bool) -> None:
        """`single`: the server's one session answers every request, whatever it names (see
        `ServerConfig.http_sessions`)."""
        self.sessions = sessions
        self.env_name = env_name
        self.step_timeout_s = step_timeout_s
        self.single = single
        self._single_id: str | None = None

    def _addresses_session(self, req: http.Request) -> bool:
        """Whether a request goes to a session (all but an /mcp call outside any: that one is
        OpenEnv's stateless call on a throwaway instance)."""
        if req.path != "/mcp":
            return True
        return _SESSION_KEY in req.headers or (self.single and self._single_id in self.sessions)

    async def serve(self, req: http.Request) -> bytes:
        """The reply to one of the binding's requests (/reset, /step, /state, /close, /mcp)."""
        if not self._addresses_session(req):
            return await self._stateless_post(req)
        kind = _KINDS[req.path]
        try:
            data = _body(req, kind)
            if kind == "reset":
                session, fresh = self._session_for_reset(req)
            else:
                session, fresh = self._find(req), False
            async with session.turn:
                return await self._run(session, kind, data, fresh)
        except StepDeadline:
            limit = self.step_timeout_s
            late = f"{kind} ran past the step timeout of {limit:g} s; the session is closed: its state is unknown"
            return http.json_response(504, error_frame(ErrorCode.EXECUTION_ERROR, late, timeout=True))
        except EnvError as e:
            return http.json_response(_STATUS[e.code], env_error_frame(e))
        except Exception as e:
            failed = error_frame(ErrorCode.EXECUTION_ERROR, f"{kind} failed: {type(e).__name__}: {e}")
            return http.json_response(500, failed)

    async def _run(self, session: Session, kind: str, data: Any, fresh: bool) -> bytes:
        if self.sessions.get(session.id) is not session:  # closed or reaped while this request queued
            raise SessionError(f"session {session.id} was closed")
        if kind == "close":
            self._close(session)
            return http.json_response(200, {"closed": session.id})
        session.busy = True
        try:
            reply = await run_message(session.runner, self.env_name, kind, data, self._bounded)
        except StepDeadline:
            self._close(session)
            raise
        except BaseException:
            if fresh:  # a session whose first reset failed was never handed out: nobody could close it
                self._close(session)
            raise
        finally:
            session.busy = False
            session.last_active = time.monotonic()
        if reply is None:  # an MCP notification
            return http.render_response(202)
        return http.json_response(200, reply["data"], {SESSION_HEADER: session.id})

    async def _bounded(self, work: Any) -> Any:
        limit = self.step_timeout_s
        if limit is None:
            return await work
        try:
            async with asyncio.timeout(limit) as scope:
                return await work
        except StepOverrun:  # an inline call, cut by the watchdog: the loop could not time it out
            raise StepDeadline from None
        except TimeoutError:
            if scope.expired():  # ours, not a TimeoutError the environment raised
                raise StepDeadline from None
            raise

    # -- MCP outside any session ----------------------------------------------------

    async def _stateless_post(self, req: http.Request) -> bytes:
        try:
            status, reply = await self._stateless_mcp(req.body)
        except Exception as e:  # a broken environment must not take the connection's server down
            log.exception("POST /mcp failed")
            return http.json_response(200, mcp.rpc_error(None, mcp.INTERNAL_ERROR, f"{type(e).__name__}: {e}"))
        # A notification gets no JSON-RPC reply: 202 and no body, as MCP's HTTP transport has it.
        return http.json_response(status, reply) if reply is not None else http.render_response(202)

    async def _stateless_mcp(self, body: bytes) -> tuple[int, dict[str, Any] | None]:
        """One call on a throwaway instance, as OpenEnv does. The instance holds a session slot
        while it lives, and the call has the step deadline, as on a WebSocket session."""
        try:
            request = json.loads(body)
        except (ValueError, RecursionError) as e:
            return 200, mcp.rpc_error(None, mcp.PARSE_ERROR, f"invalid JSON: {e}")
        request_id = request.get("id") if isinstance(request, dict) else None
        try:
            self.sessions.reserve()
        except CapacityReachedError as e:
            return 503, mcp.rpc_error(request_id, mcp.SERVER_ERROR, str(e))
        try:
            runner = SessionRunner(self.sessions.runtime)
            try:
                async with asyncio.timeout(self.step_timeout_s):
                    return 200, await mcp.handle_jsonrpc(request, runner.tools, self.env_name)
            except TimeoutError:
                late = f"the call ran past the step timeout of {self.step_timeout_s:g} s"
                return 200, mcp.rpc_error(request_id, mcp.SERVER_ERROR, late)
            finally:
                runner.close()
        finally:
            self.sessions.release_reservation()

    # -- finding sessions ------------------------------------------------------------

    def _session_for_reset(self, req: http.Request) -> tuple[Session, bool]:
        """The session a /reset restarts, or a new one (`True`) when it names none."""
        if _SESSION_KEY in req.headers or (self.single and self._single_id in self.sessions):
            return self._find(req), False
        self.sessions.reserve()
        session = self.sessions.open(None)  # FactoryError: nothing held, the caller reports it
        if self.single:
            self._single_id = session.id
        return session, True

    def _find(self, req: http.Request) -> Session:
        named = req.headers.get(_SESSION_KEY)
        if named is None and self.single:
            named = self._single_id
        if named is None:
            raise SessionError(f"{req.path} needs the {SESSION_HEADER} header that POST /reset answered with")
        session = self.sessions.get(named)
        if session is None or session.conn is not None:  # a WebSocket's session is not for HTTP requests
            raise SessionError(f"no session {named[:80]!r}: it was closed, reaped after idling, or never opened")
        return session

    def _close(self, session: Session) -> None:
        self.sessions.release(session)
        if self._single_id == session.id:
            self._single_id = None

    def reap_idle(self, cutoff: float) -> int:
        """Close the binding's sessions idle since before `cutoff`."""
        idle = [s for s in self.sessions.values() if s.conn is None and not s.busy and s.last_active < cutoff]
        for session in idle:
            log.info("reaping HTTP session %s: idle", session.id)
            self._close(session)
        return len(idle)


def _body(req: http.Request, kind: str) -> Any:
    """The message's data from the request body: the reset kwargs, the step's action, a JSON-RPC request."""
    if kind in ("state", "close"):
        return None
    if not req.body:
        if kind == "reset":  # OpenEnv's ResetRequest is all optional
            return {}
        raise MessageValidationError(f"POST {req.path} needs a JSON body", errors=[])
    try:
        parsed = orjson.loads(req.body)
    except (ValueError, RecursionError) as e:
        raise InvalidJSONError(f"invalid JSON: {type(e).__name__}: {e}") from None
    if kind != "step":
        return parsed
    if not isinstance(parsed, dict) or "action" not in parsed:
        raise MessageValidationError('POST /step takes {"action": {...}}, as OpenEnv\'s StepRequest', errors=[])
    return parsed["action"]
