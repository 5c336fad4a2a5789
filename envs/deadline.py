"""Waiting without losing a cancellation.

`within`: an awaitable's result, or TimeoutError after a deadline. What `asyncio.wait_for` does,
minus a race of Python 3.11's: there, a cancellation that lands just as the awaited work
finishes is lost (wait_for returns the result), so an episode's deadline, which cancels the
episode, could pass unnoticed while the episode connected and ran on. `asyncio.timeout` cancels
the calling task itself and never loses one.

`stop`: cancel a task of one's own and wait until it has ended. Not `task.cancel()` then
`await task` under `suppress(CancelledError)`: a cancellation of the caller that lands while it
waits is handed to the awaited task (`Task.cancel` cancels what a task awaits), comes back as
that task's CancelledError, and is suppressed with it, so the caller runs on as if never
cancelled (Ctrl-C's cancellation of the main task, and `asyncio.run` returns normally).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def within(seconds: float | None, awaitable: Awaitable[T]) -> T:
    """`awaitable`'s result; TimeoutError if `seconds` (None: no limit) pass first."""
    async with asyncio.timeout(seconds):
        return await awaitable


async def stop(task: asyncio.Future[object]) -> None:
    """Cancel `task` and return once it has ended, raising what it raised other than its
    cancellation. A cancellation of the caller while it waits propagates (`task` still ends:
    it was cancelled)."""
    task.cancel()
    await asyncio.wait([task])  # the caller waits on a future of its own: its cancellation stays its own
    if not task.cancelled() and (error := task.exception()) is not None:
        raise error
