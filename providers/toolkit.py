"""Helpers the built-in providers share for the contract's hard parts (`providers.contract`):
blocking SDK calls in threads that a cancelled caller cannot turn into leaked sandboxes, one
create per idempotency key at a time, and the platform's timestamps as `Sandbox.created_at`.
A plugin may use them; the contract does not require it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from providers.contract import Sandbox, SandboxSpec


def utc_from_timestamp(ts: float) -> datetime:
    """Seconds since the epoch (a label's, a platform's) as `Sandbox.created_at` holds them."""
    return datetime.fromtimestamp(ts, tz=UTC)


class InflightCalls:
    """Counts blocking provider calls still running in threads.

    A task awaiting `asyncio.to_thread(create)` can be cancelled, but the thread runs on
    and makes the sandbox anyway; `close()` waits for such calls before destroying what
    the provider knows, so a cancelled create cannot leak a sandbox.
    """

    def __init__(self) -> None:
        self._count = 0
        self._idle = threading.Condition()

    @contextmanager
    def track(self) -> Iterator[None]:
        with self._idle:
            self._count += 1
        try:
            yield
        finally:
            with self._idle:
                self._count -= 1
                self._idle.notify_all()

    def wait_idle(self, timeout_s: float) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: self._count == 0, timeout_s)


class KeyLocks:
    """One lock per idempotency key: concurrent creates with one key in one process run one
    after the other, so the second finds the first's sandbox instead of racing it."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    @contextmanager
    def hold(self, spec: SandboxSpec) -> Iterator[None]:
        """Held around a create of `spec`; nothing to wait for when it has no key."""
        if spec.idempotency_key is None:
            yield
            return
        with self._guard:
            lock = self._locks.setdefault(spec.key_digest, threading.Lock())
        with lock:
            yield


_undoing: set[asyncio.Future[None]] = set()


async def create_in_thread(
    spec: SandboxSpec, create: Callable[[SandboxSpec], Sandbox], destroy: Callable[[str], Awaitable[None]]
) -> Sandbox:
    """Run a blocking `create(spec)` in a thread. If the caller is cancelled meanwhile the thread
    runs on; what it makes is destroyed as soon as it is done, so a cancelled create leaks
    nothing. (Not for a keyed create: another caller may hold that sandbox under the same key,
    and a retry with the key will find it.)"""
    making = asyncio.ensure_future(asyncio.to_thread(create, spec))
    try:
        return await asyncio.shield(making)
    except asyncio.CancelledError:
        if spec.idempotency_key is None:
            making.add_done_callback(lambda done: _undo(done, destroy))
        raise


def _undo(done: asyncio.Future[Sandbox], destroy: Callable[[str], Awaitable[None]]) -> None:
    if done.cancelled() or done.exception() is not None:
        return
    undoing = asyncio.ensure_future(destroy(done.result().id))
    _undoing.add(undoing)
    undoing.add_done_callback(_undoing.discard)
