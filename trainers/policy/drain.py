"""`DrainGate`: requests pass through concurrently; an exclusive job (a weight load) closes the
gate, waits until every request inside has left, runs alone, then reopens it.

    generate ─► async with gate.request(): ...      (many at once)
    load     ─► async with gate.exclusive(): ...    (new requests wait; in-flight ones finish first)

An engine that schedules requests itself (vLLM's async engine) gets continuous batching from
submitting each request as it arrives; this keeps weight loads between requests, so no sample
mixes two policies and every `Generation` carries the version that produced all of its tokens.
Loads queue behind one another in arrival order.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

__all__ = ["DrainGate"]


class DrainGate:
    """A readers-writer gate for one event loop, in which a waiting writer holds new readers out."""

    def __init__(self) -> None:
        self._inside = 0
        self._open = asyncio.Event()
        self._open.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._exclusive = asyncio.Lock()

    @asynccontextmanager
    async def request(self) -> AsyncIterator[None]:
        """Hold the gate open for one request; waits while an exclusive job waits or runs."""
        while not self._open.is_set():  # reopened, then closed again before this task ran: wait on
            await self._open.wait()
        self._inside += 1
        self._idle.clear()
        try:
            yield
        finally:  # synchronous, so a cancelled request still leaves
            self._inside -= 1
            if self._inside == 0:
                self._idle.set()

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Run alone: no request starts from now on, and the body waits for those in flight."""
        async with self._exclusive:
            self._open.clear()
            try:
                await self._idle.wait()
                yield
            finally:
                self._open.set()
