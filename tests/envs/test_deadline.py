"""`within`: a deadline that, unlike Python 3.11's `asyncio.wait_for`, never loses a cancellation;
`stop`: a task of one's own cancelled and waited for, without losing the caller's."""

from __future__ import annotations

import asyncio

import pytest

from envs.deadline import stop, within


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


def _slow_to_stop(stopping: asyncio.Event, release: asyncio.Event) -> asyncio.Task[None]:
    """A producer that, cancelled, takes a while to clean up (as `run_groups` cancelling its
    groups on the workers does)."""

    async def produce() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            stopping.set()
            await release.wait()

    return asyncio.ensure_future(produce())


async def test_a_cancellation_of_the_caller_while_it_stops_a_task_is_not_lost() -> None:
    # Ctrl-C cancels the trainer's main task just as it stops its rollout producer: the run
    # must stop, not run on to its final evaluation and exit 0. Under `suppress(CancelledError)`
    # around `await producer`, that cancellation went to the producer and came back suppressed.
    stopping, release = asyncio.Event(), asyncio.Event()
    producer = _slow_to_stop(stopping, release)
    ran_on = False

    async def main() -> None:
        nonlocal ran_on
        await stop(producer)
        ran_on = True

    task = asyncio.ensure_future(main())
    await stopping.wait()  # the main task now waits for the producer to end
    task.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not ran_on and producer.cancelled()


async def test_stop_returns_once_the_task_ended_and_raises_its_errors() -> None:
    stopping, release = asyncio.Event(), asyncio.Event()
    producer = _slow_to_stop(stopping, release)
    await asyncio.sleep(0)
    stopper = asyncio.ensure_future(stop(producer))
    await stopping.wait()
    assert not stopper.done()  # waits for the task's cleanup
    release.set()
    await stopper
    assert producer.cancelled()

    async def fails_on_cancel() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise RuntimeError("cleanup failed") from None

    failing = asyncio.ensure_future(fails_on_cancel())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="cleanup failed"):
        await stop(failing)
    await stop(asyncio.ensure_future(asyncio.sleep(0)))  # one that already ended or never started: fine
