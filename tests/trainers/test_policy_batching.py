"""`MicroBatcher`: coalescing, limits, errors, cancellation, and work queued between batches."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from trainers.policy.batching import MicroBatcher


class Doubler:
    """A real batch function: doubles each item, records every batch, optionally slowly, held at a
    gate until the test opens it, or failing."""

    def __init__(
        self,
        delay_s: float = 0.0,
        fail_on: int | None = None,
        log: list[str] | None = None,
        gate: threading.Event | None = None,
    ) -> None:
        self.batches: list[list[int]] = []
        self.log = log if log is not None else []
        self.delay_s = delay_s
        self.fail_on = fail_on
        self.gate = gate
        self.threads: set[str] = set()

    def __call__(self, items: list[int]) -> list[int]:
        self.threads.add(threading.current_thread().name)
        self.batches.append(items)
        self.log.append(f"batch {items}")
        time.sleep(self.delay_s)
        if self.gate is not None:
            self.gate.wait(30)
        if self.fail_on in items:
            raise RuntimeError(f"engine failed on {self.fail_on}")
        return [2 * x for x in items]


async def test_concurrent_calls_coalesce_into_one_batch_off_the_loop() -> None:
    fn = Doubler()
    batcher = MicroBatcher(fn, max_batch=16, max_wait_s=0.05, thread_name="t")
    results = await asyncio.gather(*(batcher.submit([i]) for i in range(10)))
    assert results == [[2 * i] for i in range(10)]
    assert fn.batches == [list(range(10))]
    assert batcher.batch_sizes == {10: 1}
    assert fn.threads != {threading.current_thread().name}
    assert asyncio.all_tasks() == {asyncio.current_task()}  # the drainer exits once the queue is empty


async def test_max_batch_splits_in_arrival_order() -> None:
    fn = Doubler()
    batcher = MicroBatcher(fn, max_batch=4, max_wait_s=0.05, thread_name="t")
    await asyncio.gather(*(batcher.submit([i]) for i in range(10)))
    assert fn.batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


async def test_calls_arriving_during_a_batch_form_the_next_one() -> None:
    fn = Doubler(delay_s=0.1)
    batcher = MicroBatcher(fn, max_batch=8, max_wait_s=0.0, thread_name="t")
    first = asyncio.create_task(batcher.submit([1]))
    await asyncio.sleep(0.03)  # batch [1] is running on the worker thread now
    rest = await asyncio.gather(batcher.submit([2]), batcher.submit([3]))
    assert (await first, rest) == ([2], [[4], [6]])
    assert fn.batches == [[1], [2, 3]]


async def test_an_engine_failure_reaches_its_callers_and_later_batches_still_run() -> None:
    fn = Doubler(fail_on=3)
    batcher = MicroBatcher(fn, max_batch=2, max_wait_s=0.02, thread_name="t")
    outcomes = await asyncio.gather(*(batcher.submit([i]) for i in range(6)), return_exceptions=True)
    assert [type(o).__name__ if isinstance(o, Exception) else o for o in outcomes] == [
        [0],
        [2],
        "RuntimeError",
        "RuntimeError",
        [8],
        [10],
    ]
    assert fn.batches == [[0, 1], [2, 3], [4, 5]]


async def test_a_cancelled_caller_is_skipped() -> None:
    fn = Doubler()
    batcher = MicroBatcher(fn, max_batch=8, max_wait_s=0.05, thread_name="t")
    doomed = asyncio.create_task(batcher.submit([1]))
    kept = asyncio.create_task(batcher.submit([2]))
    await asyncio.sleep(0)
    doomed.cancel()
    assert await kept == [4]
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert fn.batches == [[2]]


async def test_a_cancelled_drainer_cancels_every_waiting_caller() -> None:
    gate = threading.Event()  # holds batch [0] on the thread until the drainer is cancelled
    fn = Doubler(gate=gate)
    batcher = MicroBatcher(fn, max_batch=1, max_wait_s=0.0, thread_name="t")
    calls = [asyncio.create_task(batcher.submit([i])) for i in range(3)]
    try:
        async with asyncio.timeout(10):
            while fn.batches != [[0]]:  # batch [0] is running, [1] and [2] are queued
                await asyncio.sleep(0.01)
        (drainer,) = [task for task in asyncio.all_tasks() if task.get_name() == "t-drain"]
        drainer.cancel()
        async with asyncio.timeout(10):  # a stranded caller would wait forever
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
    finally:
        gate.set()
    assert [type(o) for o in outcomes] == [asyncio.CancelledError] * 3


async def test_call_runs_between_batches() -> None:
    order: list[str] = []
    batcher = MicroBatcher(Doubler(delay_s=0.05, log=order), max_batch=8, max_wait_s=0.0, thread_name="t")
    first = asyncio.create_task(batcher.submit([1]))
    await asyncio.sleep(0.01)
    swap = asyncio.create_task(batcher.call(order.append, "swap"))
    await asyncio.sleep(0)
    second = asyncio.create_task(batcher.submit([2]))
    await asyncio.gather(first, swap, second)
    assert order == ["batch [1]", "swap", "batch [2]"]


async def test_items_arriving_one_by_one_are_taken_in_one_job_no_batch_between() -> None:
    """A weight update in buckets: a batch submitted while the buckets still arrive runs after the last
    one and the update's end, never on half-loaded weights."""
    order: list[str] = []
    batcher = MicroBatcher(Doubler(log=order), max_batch=8, max_wait_s=0.0, thread_name="t")
    arrived = asyncio.Queue[str | None]()

    async def buckets():  # type: ignore[no-untyped-def]
        while (bucket := await arrived.get()) is not None:
            yield bucket

    update = asyncio.create_task(batcher.call_over(order.append, buckets(), lambda: order.append("done")))
    await arrived.put("bucket 0")
    await asyncio.sleep(0.05)
    batch = asyncio.create_task(batcher.submit([1]))  # comes while the update waits for its next bucket
    await asyncio.sleep(0.05)
    assert order == ["bucket 0"] and not batch.done()
    await arrived.put("bucket 1")
    await arrived.put(None)
    await asyncio.gather(update, batch)
    assert order == ["bucket 0", "bucket 1", "done", "batch [1]"]


def test_serves_successive_event_loops_and_blocking_callers() -> None:
    fn = Doubler()
    batcher = MicroBatcher(fn, max_batch=4, max_wait_s=0.01, thread_name="t", thread_init=lambda: fn.log.append("init"))
    assert asyncio.run(batcher.submit([1, 2])) == [2, 4]
    assert asyncio.run(batcher.submit([3])) == [6]
    assert batcher.run_now([4, 5]) == [8, 10]
    assert fn.log == ["init", "batch [1, 2]", "batch [3]", "batch [4, 5]"]


async def _trickle(batcher: MicroBatcher[int, int], count: int, every_s: float) -> list[list[int]]:
    """`count` single-item calls, one every `every_s` (episodes resuming one after another)."""

    async def later(i: int) -> list[int]:
        await asyncio.sleep(i * every_s)
        return await batcher.submit([i])

    return await asyncio.gather(*(later(i) for i in range(count)))


async def test_a_trickle_of_calls_stays_one_batch_while_it_keeps_coming() -> None:
    # Calls 50 ms apart for 550 ms: each arrival holds the batch open 400 ms more, so one batch,
    # though a window of 400 ms from the first call alone would have split it in two. The gaps
    # are far below the quiet gap, so a loaded host's stalls do not split it either.
    fn = Doubler()
    batcher = MicroBatcher(fn, max_batch=64, max_wait_s=0.4, max_window_s=10.0, thread_name="t")
    started = time.monotonic()
    assert await _trickle(batcher, 12, 0.05) == [[2 * i] for i in range(12)]
    assert fn.batches == [list(range(12))]
    assert time.monotonic() - started < 5  # closed by the quiet gap, not the 10 s window


async def test_the_window_caps_how_long_the_first_call_waits() -> None:
    fn = Doubler()
    batcher = MicroBatcher(fn, max_batch=64, max_wait_s=0.15, max_window_s=0.5, thread_name="t")
    await _trickle(batcher, 20, 0.05)  # a steady stream for 1 s: never quiet for 150 ms
    assert len(fn.batches) >= 2 and sum(map(len, fn.batches)) == 20
    # ~500 ms of arrivals (11 calls) at most; 14 allows the first call to arrive 150 ms late.
    assert all(len(batch) <= 14 for batch in fn.batches), fn.batches


def test_the_window_cannot_be_shorter_than_the_quiet_gap() -> None:
    with pytest.raises(ValueError, match="max_wait_s <= max_window_s"):
        MicroBatcher(Doubler(), max_batch=4, max_wait_s=0.05, max_window_s=0.01, thread_name="t")
