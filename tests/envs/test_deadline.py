"""`within`: a deadline that, unlike Python 3.11's `asyncio.wait_for`, never loses a cancellation."""

from __future__ import annotations

import asyncio

import pytest

from envs.deadline import within


async def test_a_cancellation_that_lands_as_the_work_finishes_is_not_lost() -> None:
    # An episode's deadline cancels the episode; if the cancellation arrives in the same loop
    # turn as the connection it waits on completes, the episode must still stop.
    work = asyncio.get_running_loop().create_future()
    task = asyncio.ensure_future(within(10, work))
    await asyncio.sleep(0)  # the task now waits on the work
    work.set_result("connected")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_the_result_or_a_timeout() -> None:
    assert await within(1, asyncio.sleep(0, result="done")) == "done"
    assert await within(None, asyncio.sleep(0, result="no limit")) == "no limit"
    with pytest.raises(TimeoutError):
        await within(0.01, asyncio.sleep(5))
