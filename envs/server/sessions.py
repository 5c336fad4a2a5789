"""The server's sessions: one environment instance each, in a table with a fixed number of slots.

    reserve() ──► open(conn) ──► Session (its runner: the environment instance) ──► release(session)
        └── or release_reservation(), when no session came of the slot (a throwaway MCP call)

A WebSocket session and one of the HTTP session binding (`envs.server.http_sessions`) take
their slots from the same table, so `max_sessions` bounds both together. A slot is reserved
before the environment is created (which may take a while), so that two clients racing for the
last slot cannot both get it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Iterator, Mapping
from typing import Protocol

from envs.server.inline import InlineCalls
from envs.server.metrics import EnvCallStats
from envs.server.runtime import EnvRuntime, SessionRunner
from hillclimb.errors import CapacityReachedError

log = logging.getLogger("hillclimb.envs.server")


class Carrier(Protocol):
    """What carries a WebSocket session (`envs.server.ws_session`), as the server's watchdog sees it."""

    def expire_step(self) -> None:
        """The running reset or step is past its deadline: end it."""


class Session:
    __slots__ = ("id", "conn", "runner", "last_active", "busy", "deadline", "timed_out", "turn")

    def __init__(self, session_id: str, conn: Carrier | None) -> None:
        self.id = session_id
        self.conn = conn
        """The WebSocket session carrying it; None for a session of the HTTP binding."""
        self.runner: SessionRunner | None = None
        self.last_active = time.monotonic()
        self.busy = False
        self.deadline: float | None = None  # monotonic time the running reset/step must end by
        self.timed_out = False
        self.turn = asyncio.Lock()
        """Over HTTP, requests on one session may arrive on several connections: one at a time."""


class SessionTable(Mapping[str, Session]):
    """The live sessions by id, and the slots they (and sessions being created) take."""

    def __init__(self, runtime: EnvRuntime, capacity: int, env_stats: EnvCallStats, inline: InlineCalls | None) -> None:
        self.runtime = runtime
        self.capacity = capacity
        self._env_stats = env_stats
        self._inline = inline
        self._live: dict[str, Session] = {}
        self._reserved = 0  # sessions accepted whose environment is still being created
        self._ids = itertools.count(1)

    def __getitem__(self, session_id: str) -> Session:
        return self._live[session_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._live)

    def __len__(self) -> int:
        return len(self._live)

    def reserve(self) -> None:
        active = len(self._live) + self._reserved
        if active >= self.capacity:
            raise CapacityReachedError(
                f"server at capacity: {active} of {self.capacity} sessions in use",
                active_sessions=active,
                max_sessions=self.capacity,
            )
        self._reserved += 1

    def release_reservation(self) -> None:
        """Give back a slot taken by `reserve()` (a session opened, or a call finished)."""
        self._reserved -= 1

    def open(self, conn: Carrier | None) -> Session:
        """A new session in the slot `reserve()` took; raises FactoryError if its environment fails."""
        self.release_reservation()
        session = Session(f"s{next(self._ids)}-{os.urandom(4).hex()}", conn)
        session.runner = SessionRunner(self.runtime, self._env_stats, self._inline)  # may raise FactoryError
        self._live[session.id] = session
        return session

    def release(self, session: Session) -> None:
        if self._live.pop(session.id, None) is not None and session.runner is not None:
            try:
                session.runner.close()
            except Exception:
                log.exception("closing session %s failed", session.id)
