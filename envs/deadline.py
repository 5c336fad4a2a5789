"""`within`: an awaitable's result, or TimeoutError after a deadline.

What `asyncio.wait_for` does, minus a race of Python 3.11's: there, a cancellation that lands
just as the awaited work finishes is lost (wait_for returns the result), so an episode's
deadline, which cancels the episode, could pass unnoticed while the episode connected and ran
on. `asyncio.timeout` cancels the calling task itself and never loses one.
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
