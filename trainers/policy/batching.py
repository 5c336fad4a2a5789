"""`MicroBatcher`: many concurrent single-request calls in, batched engine calls out.

    episode tasks ─ submit([item]) ─► queue ─► wait until max_batch items, or no new item for
                                                max_wait_s, or max_window_s after the oldest
                                              ─► run_batch(items) on one worker thread
                                              ─► each caller's future gets its own result

Rollouts run hundreds of episodes on one event loop, each asking for one generation at a
time. Running those one by one wastes the accelerator; running them on the event loop
stalls every sandbox connection. So calls are pooled for a few milliseconds and each batch
runs on a dedicated thread (torch releases the GIL inside its kernels, so the loop keeps
serving I/O). The thread is the only one that touches the engine: `call` and `call_over` queue
other work (a weight swap, whole or in buckets) behind the batch in flight, so engine state never
changes mid-batch.

Batches are static: a batch runs to its last token before the next one starts, so a request that
arrives meanwhile waits for the whole batch (`ContinuousBatcher` lets it join at the next step).

The window stays open while requests keep coming (each arrival extends it by `max_wait_s`, up to
`max_window_s` after the first): episodes that a batch's results set going return over several
milliseconds (an environment step, a Ray call each), and a fixed short window split them into
two or three decode passes where one would do.

The queue is drained by a task that exists only while work is queued, so an idle batcher
leaves nothing running on the loop, and a later call may come from another event loop.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

__all__ = ["MicroBatcher", "each_in_order"]

log = logging.getLogger("hillclimb.trainers.policy")

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")
T = TypeVar("T")


@dataclass(slots=True)
class _Pending(Generic[ItemT, ResultT]):
    item: ItemT
    future: asyncio.Future[ResultT]
    enqueued_at: float = field(default=0.0)


class MicroBatcher(Generic[ItemT, ResultT]):
    """Runs `run_batch(items) -> results` (one result per item, in order) on one worker thread, or,
    when `run_batch` is a coroutine function (it waits on I/O rather than computes), on the event
    loop; either way one batch at a time."""

    def __init__(
        self,
        run_batch: Callable[[list[ItemT]], list[ResultT]] | Callable[[list[ItemT]], Awaitable[list[ResultT]]],
        *,
        max_batch: int,
        max_wait_s: float,
        thread_name: str,
        max_window_s: float | None = None,
        thread_init: Callable[[], object] | None = None,
    ) -> None:
        """`max_wait_s`: the quiet gap that closes a batch; `max_window_s` (default `max_wait_s`):
        the longest its first item waits. `thread_init` runs once on the worker thread before its
        first job (per-thread settings)."""
        max_window_s = max_wait_s if max_window_s is None else max_window_s
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_s < 0 or max_window_s < max_wait_s:
            raise ValueError(f"need 0 <= max_wait_s <= max_window_s, got {max_wait_s} and {max_window_s}")
        self._run_batch = run_batch
        self._name = thread_name
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_window_s = max_window_s
        self._last_arrival = 0.0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name, initializer=thread_init)
        self._queue: collections.deque[_Pending[ItemT, ResultT]] = collections.deque()
        self._in_flight: list[_Pending[ItemT, ResultT]] = []
        self._drainer: asyncio.Task[None] | None = None
        self._arrived = asyncio.Event()  # replaced by each drainer (see _ensure_drainer)
        self.batch_sizes: collections.Counter[int] = collections.Counter()
        """How many batches of each size have run (a metric, and what tests observe)."""

    @property
    def running(self) -> int:
        """Items in the batch decoding now (a metric)."""
        return len(self._in_flight)

    async def submit(self, items: list[ItemT]) -> list[ResultT]:
        """The results of `items`, computed in whatever batches the traffic allows."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._ensure_drainer(loop)  # first: it refuses a second event loop before anything is queued
        pending = [_Pending(item, loop.create_future(), now) for item in items]
        self._queue.extend(pending)
        self._last_arrival = now
        self._arrived.set()
        return await all_results([p.future for p in pending])

    def run_now(self, items: list[ItemT]) -> list[ResultT]:
        """Run `items` as one batch and block until done (for callers without an event loop)."""
        self.batch_sizes[len(items)] += 1
        return self._executor.submit(self._run_checked, items).result()

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on the worker thread, after the batch in flight and before the next."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def call_over(self, fn: Callable[[T], object], items: AsyncIterator[T], then: Callable[[], object]) -> None:
        """Run `fn(item)` on the worker thread for each of `items` as it arrives, then `then()`, all
        as one job: no batch runs in between (a weight update arriving in buckets never meets a
        batch half-way). Items are awaited on this event loop, one at a time, as the thread asks."""
        await self.call(each_in_order(fn, items, then, asyncio.get_running_loop()))

    def _ensure_drainer(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._drainer is not None and not self._drainer.done():
            if self._drainer.get_loop() is not loop:
                raise RuntimeError("a MicroBatcher serves one event loop at a time; another loop is still using it")
            return
        # A fresh Event per drainer: asyncio primitives bind to the loop that first waits on them.
        self._arrived = asyncio.Event()
        self._drainer = loop.create_task(self._drain(), name=f"{self._name}-drain")

    async def _drain(self) -> None:
        try:
            while self._queue:
                await self._gather_window()
                batch = self._take()
                if batch:
                    await self._run(batch)
        except asyncio.CancelledError:
            self._fail_all(None)
            raise
        except Exception as e:  # a bug here would strand every waiting episode: fail them loudly instead
            log.exception("policy batcher stopped unexpectedly")
            self._fail_all(e)

    async def _gather_window(self) -> None:
        """Wait until a full batch is queued, nothing new arrived for `max_wait_s`, or the oldest
        item has waited `max_window_s`."""
        loop = asyncio.get_running_loop()
        while len(self._queue) < self.max_batch:
            deadline = min(self._queue[0].enqueued_at + self.max_window_s, self._last_arrival + self.max_wait_s)
            if (remaining := deadline - loop.time()) <= 0:
                return
            self._arrived.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._arrived.wait()
            except TimeoutError:
                return

    def _take(self) -> list[_Pending[ItemT, ResultT]]:
        batch: list[_Pending[ItemT, ResultT]] = []
        while self._queue and len(batch) < self.max_batch:
            pending = self._queue.popleft()
            if not pending.future.done():  # its caller gave up (cancelled or timed out)
                batch.append(pending)
        return batch

    async def _run(self, batch: list[_Pending[ItemT, ResultT]]) -> None:
        self.batch_sizes[len(batch)] += 1
        self._in_flight = batch
        loop = asyncio.get_running_loop()
        items = [p.item for p in batch]
        try:
            if inspect.iscoroutinefunction(self._run_batch):  # I/O, not compute: it runs on the loop
                results = _checked(items, await self._run_batch(items))
            else:
                results = await loop.run_in_executor(self._executor, self._run_checked, items)
        except Exception as e:  # the engine failed this batch: its callers get the error, later batches still run
            self._in_flight = []
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(e)
            return
        # (On cancellation `_in_flight` stays set, so `_drain` cancels these callers too.)
        self._in_flight = []
        for pending, result in zip(batch, results, strict=True):
            if not pending.future.done():
                pending.future.set_result(result)

    def _run_checked(self, items: list[ItemT]) -> list[ResultT]:
        return _checked(items, self._run_batch(items))  # type: ignore[arg-type]

    def _fail_all(self, error: Exception | None) -> None:
        for pending in [*self._in_flight, *self._queue]:
            if pending.future.done():
                continue
            if error is None:
                pending.future.cancel()
            else:
                pending.future.set_exception(error)
        self._queue.clear()
        self._in_flight = []


async def all_results(futures: list[asyncio.Future[ResultT]]) -> list[ResultT]:
    """Every future's result, in order; the first failure raised once all are done, so no
    future's exception goes unretrieved."""
    outcomes = await asyncio.gather(*futures, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return list(outcomes)  # type: ignore[arg-type]


def each_in_order(
    fn: Callable[[T], object], items: AsyncIterator[T], then: Callable[[], object], loop: asyncio.AbstractEventLoop
) -> Callable[[], None]:
    """A job for a worker thread: `fn(item)` for each of `items`, awaited on `loop` one at a time
    as the thread asks, then `then()`."""

    async def following() -> T:
        return await anext(items)

    def each() -> None:
        while True:
            try:
                item = asyncio.run_coroutine_threadsafe(following(), loop).result()
            except StopAsyncIteration:
                break
            fn(item)
        then()

    return each


def _checked(items: list[Any], results: list[ResultT]) -> list[ResultT]:
    if len(results) != len(items):
        raise RuntimeError(f"run_batch returned {len(results)} results for {len(items)} items")
    return results
