"""`ContinuousBatcher`: requests join the running decode batch at the next step and leave it
when they are done (iteration-level scheduling), on one worker thread.

    episode tasks ─ submit([item]) ─► queue
    worker thread, one job while anything runs or waits:
        each step: admit queued items (up to max_batch running) ─► decode.step()
                   ─► each finished item's result to its caller's future (on its event loop)
        ends when nothing runs and nothing waits
    call / call_over (a weight load): admission stops at once; the job ends when the rows
        running finish; the load runs next on the same thread; admission resumes after it

Against `MicroBatcher`'s static batches: a request arriving while others decode starts at the
next step instead of after the whole batch, and a short answer returns when it is done instead
of when the batch's longest is. A weight load still never meets a row half-way: the rows in
flight finish on the weights they started with, and every result carries that version.

The engine supplies the decode batch (`Decode`); this module knows nothing of models or torch.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from trainers.policy.batching import all_results, each_in_order

__all__ = ["ContinuousBatcher", "Decode"]

log = logging.getLogger("hillclimb.trainers.policy")

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")
T = TypeVar("T")


class Decode(Protocol[ItemT, ResultT]):
    """A running decode batch, driven by one thread."""

    def admit(self, entries: list[tuple[object, ItemT]]) -> None:
        """Add items (each with an opaque key) to join at the next `step`."""
        ...

    def step(self) -> list[tuple[object, ResultT]]:
        """Prefill what was admitted and advance every running item one token; the finished ones
        (key, result) leave the batch."""
        ...

    def keys(self) -> list[object]:
        """The keys of every item admitted and not yet returned."""
        ...


@dataclass(slots=True, eq=False)
class _Pending(Generic[ItemT, ResultT]):
    item: ItemT
    future: asyncio.Future[ResultT]

    def resolve(self, result: ResultT | None, error: BaseException | None = None) -> None:
        """Settle the caller's future from any thread, on its own event loop."""

        def settle() -> None:
            if self.future.done():  # its caller gave up (cancelled or timed out)
                return
            if error is None:
                self.future.set_result(result)  # type: ignore[arg-type]
            else:
                self.future.set_exception(error)

        self.future.get_loop().call_soon_threadsafe(settle)


class ContinuousBatcher(Generic[ItemT, ResultT]):
    """Runs the decode batches `start()` makes on one worker thread, admitting items between steps."""

    def __init__(
        self,
        start: Callable[[], Decode[ItemT, ResultT]],
        *,
        max_batch: int,
        thread_name: str,
        thread_init: Callable[[], object] | None = None,
    ) -> None:
        """`start` makes an empty decode batch on the worker thread (at the start of each job, so
        after any load). `thread_init` runs once on the worker thread before its first job."""
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self._start = start
        self.max_batch = max_batch
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name, initializer=thread_init)
        self._queue: collections.deque[_Pending[ItemT, ResultT]] = collections.deque()
        self._lock = threading.Lock()
        self._loads = 0
        """Exclusive jobs submitted and not yet run: no item is admitted while there is one."""
        self._busy = False
        """A decode job is queued or running on the worker (guarded by `_lock`)."""
        self.running = 0
        """Items in the running batch (read from any thread: a metric)."""
        self.batch_sizes: collections.Counter[int] = collections.Counter()
        """Groups admitted together, by size (each one prefill)."""
        self.step_sizes: collections.Counter[int] = collections.Counter()
        """Decode steps, by the number of items running."""

    async def submit(self, items: list[ItemT]) -> list[ResultT]:
        """The results of `items`, each computed as the running batch admits it."""
        loop = asyncio.get_running_loop()
        pending = [_Pending[ItemT, ResultT](item, loop.create_future()) for item in items]
        self._queue.extend(pending)
        self._ensure_job()
        return await all_results([p.future for p in pending])

    def run_now(self, items: list[ItemT]) -> list[ResultT]:
        """Run `items` as one batch of their own and block until done (for callers without an event loop)."""
        return self._executor.submit(self._alone, items).result()

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on the worker thread once the items running have finished; items queued
        meanwhile join after it."""
        with self._lock:  # counted and queued at once: a job that sees the count finds it queued ahead
            self._loads += 1
            done = self._executor.submit(self._exclusive, fn, args)
        return await asyncio.wrap_future(done)

    async def call_over(self, fn: Callable[[T], object], items: AsyncIterator[T], then: Callable[[], object]) -> None:
        """Run `fn(item)` for each of `items` as it arrives, then `then()`, as one `call`: no item
        decodes in between (a weight update arriving in buckets never meets a row half-way)."""
        await self.call(each_in_order(fn, items, then, asyncio.get_running_loop()))

    def _exclusive(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        try:
            return fn(*args)
        finally:  # on the worker, before the next job in line starts, so that job admits
            with self._lock:
                self._loads -= 1

    def _ensure_job(self) -> None:
        # Tracked by a flag, not an asyncio future: a job may outlive the event loop that started it
        # (asyncio.run returns as soon as its results are in), and a later loop must still see it end.
        with self._lock:
            if self._busy:
                return
            self._busy = True
            self._executor.submit(self._decode)

    def _decode(self) -> None:
        """One job: step the running batch, admitting between steps, until nothing is left to do."""
        decode: Decode[ItemT, ResultT] | None = None
        try:
            while True:
                admitted = self._admit(decode)
                if admitted:
                    decode = decode or self._start()
                    decode.admit([(p, p.item) for p in admitted])
                    self.batch_sizes[len(admitted)] += 1
                if decode is None or not (running := len(decode.keys())):
                    return
                self.running = running
                self.step_sizes[running] += 1
                for key, result in decode.step():
                    key.resolve(result)  # type: ignore[attr-defined]
        except Exception as e:  # the engine failed: its items get the error, later items a fresh batch
            log.exception("a continuous decode batch failed")
            for key in decode.keys() if decode is not None else []:
                key.resolve(None, e)  # type: ignore[attr-defined]
        finally:
            self.running = 0
            with self._lock:  # items queued after the last look (or held for a load) get the next job
                self._busy = bool(self._queue)
                if self._busy:
                    self._executor.submit(self._decode)

    def _admit(self, decode: Decode[ItemT, ResultT] | None) -> list[_Pending[ItemT, ResultT]]:
        with self._lock:
            if self._loads:
                return []
        room = self.max_batch - (len(decode.keys()) if decode is not None else 0)
        admitted: list[_Pending[ItemT, ResultT]] = []
        while self._queue and len(admitted) < room:
            pending = self._queue.popleft()
            if not pending.future.done():  # its caller gave up (cancelled or timed out)
                admitted.append(pending)
        return admitted

    def _alone(self, items: list[ItemT]) -> list[ResultT]:
        decode = self._start()
        decode.admit(list(enumerate(items)))
        self.batch_sizes[len(items)] += 1
        results: dict[object, ResultT] = {}
        while decode.keys():
            results.update(decode.step())
        return [results[i] for i in range(len(items))]
