"""`SandboxPool`: warm, liveness-checked sandboxes in front of any provider.

    lease() ─► a ready sandbox with a free session slot, health-checked just before
           └─► none: start one (within max_total, max_starting and the create rate) and wait
           └─► too many waiters, or the deadline passes: a typed error, never an unbounded queue

A sandbox whose environment supports concurrent sessions serves up to
`sessions_per_sandbox` leases at once and goes back to the pool on release. One that
does not (`terminal`) serves exactly one lease and is destroyed on release; the
maintainer keeps `min_ready` fresh ones warm. A sandbox that fails its health check,
is released as broken, or is close to its time-to-live is retired and replaced.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

from envs.client.base import BaseEnvClient
from envs.client.handle import EnvHandle
from hillclimb.config.sandboxes import PoolConfig
from hillclimb.errors import HillclimbError
from hillclimb.provider_errors import FatalProviderError, ProviderError, RetryableProviderError
from orchestrator import metrics
from orchestrator.ratelimit import RateLimiter, TokenBucket
from providers.contract import Sandbox, SandboxProvider, SandboxSpec

log = logging.getLogger("hillclimb.orchestrator.pool")


class PoolClosedError(HillclimbError, RuntimeError):
    """The pool was closed."""


class LeaseTimeoutError(HillclimbError, TimeoutError):
    """No sandbox became available before the lease's deadline."""


class PoolExhaustedError(HillclimbError, RuntimeError):
    """Too many lease() calls are already waiting: back-pressure, retry later."""


@dataclass(eq=False)
class _Slot:
    sandbox: Sandbox
    capacity: int
    leases: int = 0
    checked_at: float = 0.0
    """When the sandbox last proved alive: a /health answer, or a session that finished a lease."""
    checking: asyncio.Task[bool] | None = None
    """The /health request in flight: leases arriving meanwhile wait for it, not send their own."""
    retired: bool = False
    broken_by: list[str] = field(default_factory=list)
    """Why leases on it failed (`Lease.mark_broken`): logged with its server's log tail before it goes."""
    served: int = 0
    connections: list[BaseEnvClient] = field(default_factory=list)
    """Open sessions that finished leases kept for the next lease here: a new lease takes one
    before anyone opens another, so open sessions never outnumber `capacity`."""


@dataclass(eq=False)
class Lease:
    """One session's claim on a sandbox. Release it (or use `async with`) when the session ends."""

    sandbox: Sandbox
    _pool: SandboxPool = field(repr=False)
    _slot: _Slot = field(repr=False)
    _released: bool = False
    broken: bool = False
    connection: BaseEnvClient | None = None
    """An open session on this sandbox kept from an earlier lease (shared pools), or None: reuse
    it rather than connect again; `reset()` starts a fresh episode on it (and reconnects if the
    server dropped it meanwhile)."""
    _kept: BaseEnvClient | None = field(default=None, repr=False)

    @property
    def handle(self) -> EnvHandle:
        """How to reach the sandbox's server: `lease.handle.client()` opens a session on it."""
        return self.sandbox.handle

    def keep(self, connection: BaseEnvClient) -> None:
        """Hand the session back for the next lease on this sandbox, when this one is released.
        A broken lease, a single-use pool or a retired sandbox closes it instead."""
        self._kept = connection

    def mark_broken(self, reason: str) -> None:
        """The sandbox misbehaved (`reason` says how): retire it on release instead of reusing it.
        Before it is destroyed, the pool logs the reasons with the end of its server's log."""
        self.broken = True
        self._slot.broken_by.append(reason)

    async def release(self) -> None:
        if not self._released:
            self._released = True
            await self._pool._release(self)

    async def __aenter__(self) -> Lease:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.release()


class SandboxPool:
    """Leases sandboxes of one spec from one provider."""

    def __init__(
        self,
        provider: SandboxProvider,
        spec: SandboxSpec,
        config: PoolConfig | None = None,
        *,
        shared: bool,
        rate_limiter: RateLimiter | None = None,
    ) -> None:
        self.provider = provider
        self.spec = spec
        self.config = config or PoolConfig()
        self.shared = shared
        self.capacity = self.config.sessions_per_sandbox if shared else 1
        self._limiter = rate_limiter or TokenBucket(self.config.create_rate_per_s, burst=self.config.max_starting)
        self._slots: list[_Slot] = []
        self._starting = 0
        self._destroying = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._fatal: FatalProviderError | None = None
        """Set for good: retrying cannot help (a bad spec or image)."""
        self._failing: RetryableProviderError | None = None
        """Set after `max_consecutive_failures` retryable failures in a row, until a create succeeds."""
        self._failures_in_a_row = 0
        self._closed = False
        # Resolved once: `labels()` on every lease costs more than the rest of the lease.
        self._lease_wait = metrics.LEASE_WAIT_SECONDS.labels(provider=provider.name, env=spec.env)
        _SandboxGauges.of(provider.name, spec.env).watch(self)

    # -- public API -----------------------------------------------------------------------

    async def start(self) -> None:
        """Begin warming `min_ready` sandboxes (returns at once)."""
        self._replenish()

    async def wait_warm(self, timeout_s: float | None = None) -> None:
        """Wait until `min_ready` sandboxes are idle and ready."""
        async with asyncio.timeout(timeout_s):
            while self.idle < self.config.min_ready:
                self._raise_if_unusable()
                await self._wait_change()

    async def lease(self, timeout_s: float | None = None) -> Lease:
        """A sandbox session slot, liveness-checked; waits up to `timeout_s` (None: forever)."""
        started = time.monotonic()
        deadline = None if timeout_s is None else started + timeout_s
        while True:
            self._raise_if_unusable()
            slot = self._pick()
            if slot is not None:
                slot.leases += 1  # reserve before awaiting the health check
                if await self._healthy(slot):
                    slot.served += 1
                    self._replenish()
                    self._lease_wait.observe(time.monotonic() - started)
                    reused = slot.connections.pop() if slot.connections else None
                    return Lease(slot.sandbox, self, slot, connection=reused)
                slot.leases -= 1
                self._retire(slot, reason="failed its health check")
                continue
            self._grow_for_waiter()
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise LeaseTimeoutError(f"no {self.spec.env} sandbox free within {timeout_s:g} s ({self.describe()})")
            if len(self._waiters) >= self.config.max_waiters:
                raise PoolExhaustedError(
                    f"{len(self._waiters)} leases already waiting ({self.describe()}); retry later"
                )
            try:
                await self._wait_change(remaining)
            except TimeoutError:
                continue

    async def close(self, timeout_s: float = 120.0) -> None:
        """Destroy every sandbox of the pool and stop its background work.

        Creations in flight are waited for, not cancelled: their sandbox would be made
        anyway, in a thread, and leak. Each sees the pool closed and destroys its own."""
        self._closed = True
        self._wake_all()
        if self._tasks:
            _, pending = await asyncio.wait(list(self._tasks), timeout=timeout_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        slots, self._slots = self._slots, []
        await asyncio.gather(*(self._destroy_slot(s) for s in slots), return_exceptions=True)

    @property
    def idle(self) -> int:
        return self.count("ready")

    @property
    def leased(self) -> int:
        return sum(s.leases for s in self._slots)

    def describe(self) -> str:
        return (
            f"{len(self._slots)} sandboxes ({self.idle} idle, {self.leased} leases), {self._starting} starting, "
            f"{len(self._waiters)} waiting; max_total={self.config.max_total}"
        )

    # -- choosing and checking ----------------------------------------------------------

    def _pick(self) -> _Slot | None:
        now = time.time()
        best: _Slot | None = None
        for slot in self._slots:
            if slot.retired or slot.leases >= slot.capacity:
                continue
            if self._near_expiry(slot, now):
                self._retire(slot, reason="close to its time-to-live")
                continue
            if best is None or slot.leases < best.leases:  # spread sessions across sandboxes
                best = slot
        return best

    def _near_expiry(self, slot: _Slot, now: float) -> bool:
        expires = slot.sandbox.expires_at
        return expires is not None and expires - now < self.config.min_remaining_ttl_s and slot.leases == 0

    async def _healthy(self, slot: _Slot) -> bool:
        now = time.monotonic()
        if self.shared and now - slot.checked_at < self.config.health_max_age_s:
            return True
        if slot.checking is None:
            slot.checking = asyncio.ensure_future(self._check_health(slot))
            slot.checking.add_done_callback(lambda _: setattr(slot, "checking", None))
        return await asyncio.shield(slot.checking)

    async def _check_health(self, slot: _Slot) -> bool:
        try:
            status, _ = await slot.sandbox.handle.request("/health", timeout=self.config.health_timeout_s)
        except (TimeoutError, OSError, ValueError) as e:
            metrics.FAILURES.labels(provider=self.provider.name, type="health_check").inc()
            log.warning("sandbox %s failed its health check: %s", slot.sandbox.id, e)
            return False
        slot.checked_at = time.monotonic()
        return status == 200

    def _raise_if_unusable(self) -> None:
        if self._closed:
            raise PoolClosedError("the sandbox pool is closed")
        if self._fatal is not None:
            raise self._fatal
        if self._failing is not None:
            if self._starting == 0 and self._can_start():  # keep trying, at the backoff's pace
                self._start_one()
            raise self._failing

    # -- growing --------------------------------------------------------------------------

    def _can_start(self) -> bool:
        live = len([s for s in self._slots if not s.retired]) + self._starting
        return not self._closed and self._starting < self.config.max_starting and live < self.config.max_total

    def _grow_for_waiter(self) -> None:
        """Start a sandbox if the waiting leases outnumber the session slots on their way."""
        incoming = self._starting * self.capacity
        if len(self._waiters) + 1 > incoming and self._can_start():
            self._start_one()

    def _replenish(self) -> None:
        while self.idle + self._starting < self.config.min_ready and self._can_start():
            self._start_one()

    def _start_one(self) -> None:
        self._starting += 1  # counted now, so callers looping on it see it at once
        self._spawn(self._add_sandbox())

    async def _add_sandbox(self) -> None:
        try:
            await self._limiter.acquire()
            if self._closed:
                return
            sandbox = await self._create_ready()
            if self._closed:
                await self._destroy(sandbox)
                return
            self._slots.append(_Slot(sandbox, self.capacity, checked_at=time.monotonic()))
            n_failed = self._failures_in_a_row
            if self._failing is not None:
                log.warning("creating %s sandboxes works again after %d failures", self.spec.env, n_failed)
            self._failures_in_a_row, self._failing = 0, None
        except FatalProviderError as e:
            log.error("creating a %s sandbox failed, and retrying cannot help: %s", self.spec.env, e)
            self._fatal = e
        except RetryableProviderError as e:
            await self._back_off(e)
        finally:
            self._starting -= 1
            self._wake_all()
        self._replenish()

    async def _back_off(self, error: RetryableProviderError) -> None:
        """After a retryable failure: wait (holding the starting slot, so no storm of creates
        follows), exponentially longer with each failure in a row, and at least as long as the
        error asks. Past `max_consecutive_failures` leases fail fast until a create succeeds."""
        self._failures_in_a_row += 1
        n, cfg = self._failures_in_a_row, self.config
        delay = max(min(cfg.create_retry_delay_s * 2 ** (n - 1), cfg.create_retry_max_delay_s), error.delay_s)
        if n >= cfg.max_consecutive_failures:
            self._failing = error
            self._wake_all()  # waiting leases fail now rather than at their deadlines
        # The whole error (a server's log tail, often a traceback) once per streak; then its first line.
        said = str(error) if n == 1 else str(error).partition("\n")[0] + " (as before)"
        log.warning("creating a %s sandbox failed (%d in a row; retry in %.3g s): %s", self.spec.env, n, delay, said)
        await asyncio.sleep(delay)

    async def _create_ready(self) -> Sandbox:
        labels = {"provider": self.provider.name}
        start = time.monotonic()
        try:
            sandbox = await self.provider.create(self.spec)
            metrics.CREATE_SECONDS.labels(**labels).observe(time.monotonic() - start)
            await self.provider.wait_ready(sandbox, self.config.ready_timeout_s)
        except ProviderError as e:
            metrics.FAILURES.labels(provider=self.provider.name, type=type(e).__name__).inc()
            raise
        metrics.READY_SECONDS.labels(**labels).observe(time.monotonic() - start)
        return sandbox

    # -- releasing and retiring -----------------------------------------------------------

    async def _release(self, lease: Lease) -> None:
        slot = lease._slot
        slot.leases -= 1
        if lease._kept is not None:
            if lease.broken or not self.shared or slot.retired:
                self._spawn(lease._kept.close())
            else:
                slot.connections.append(lease._kept)
                slot.checked_at = time.monotonic()  # its server just answered a whole episode
        if lease.broken or not self.shared:
            self._retire(slot, reason="broken" if lease.broken else "single-use")
        self._wake_all()
        self._replenish()

    def _retire(self, slot: _Slot, reason: str) -> None:
        if not slot.retired:
            slot.retired = True
            log.debug("retiring sandbox %s: %s", slot.sandbox.id, reason)
        if slot.leases == 0 and slot in self._slots:
            self._slots.remove(slot)
            self._spawn(self._destroy_slot(slot))

    async def _destroy_slot(self, slot: _Slot) -> None:
        connections, slot.connections = slot.connections, []
        await asyncio.gather(*(c.close() for c in connections), return_exceptions=True)
        if slot.broken_by:
            await self._report_broken(slot)
        await self._destroy(slot.sandbox)

    async def _report_broken(self, slot: _Slot) -> None:
        """Say why a sandbox is going, with the end of its server's log: after `destroy` both are gone."""
        try:
            tail = await self.provider.log_tail(slot.sandbox.id)
        except ProviderError as e:
            tail = f"(unreadable: {e})"
        reasons = collections.Counter(slot.broken_by)
        said = "; ".join(f"{n} × {reason}" if n > 1 else reason for reason, n in reasons.items())
        log.warning(
            "retiring sandbox %s: %d lease(s) failed: %s; its server log ends:\n%s",
            slot.sandbox.id,
            len(slot.broken_by),
            said,
            tail.rstrip() or "(empty)",
        )

    async def _destroy(self, sandbox: Sandbox) -> None:
        self._destroying += 1
        start = time.monotonic()
        try:
            await self.provider.destroy(sandbox.id)
            metrics.DESTROY_SECONDS.labels(provider=self.provider.name).observe(time.monotonic() - start)
        except ProviderError as e:
            metrics.FAILURES.labels(provider=self.provider.name, type="destroy").inc()
            log.warning("destroying sandbox %s failed (the reaper will retry): %s", sandbox.id, e)
        finally:
            self._destroying -= 1

    # -- plumbing ------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("pool task failed", exc_info=task.exception())

    async def _wait_change(self, timeout_s: float | None = None) -> None:
        """Until the pool's state next changes (TimeoutError after `timeout_s`). Awaited directly,
        never wrapped in a task: the waiter is then registered before anything the caller just
        started (a sandbox creation that fails at once) can change the state and find no one
        to wake."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout_s):
                await waiter
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def _wake_all(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def count(self, state: str) -> int:
        """Sandboxes in `state`: starting, ready (idle), leased (serving a lease) or destroying."""
        if state == "starting":
            return self._starting
        if state == "destroying":
            return self._destroying
        slots = tuple(self._slots)  # read from the metrics server's thread too: iterate a snapshot
        if state == "ready":
            return sum(1 for s in slots if not s.retired and s.leases == 0)
        if state == "leased":
            return sum(1 for s in slots if s.leases)
        raise ValueError(f"unknown sandbox state {state!r}")


class _SandboxGauges:
    """`hillclimb_sandboxes{provider, env, state}`, computed when scraped: the sum over the pools
    of that provider and env. Nothing is updated per lease, and pools sharing labels add up
    instead of overwriting each other; a closed pool counts 0 once its sandboxes are destroyed."""

    _by_labels: dict[tuple[str, str], _SandboxGauges] = {}

    def __init__(self, provider: str, env: str) -> None:
        self._pools: weakref.WeakSet[SandboxPool] = weakref.WeakSet()
        for state in ("starting", "ready", "leased", "destroying"):
            gauge = metrics.SANDBOXES.labels(provider=provider, env=env, state=state)
            gauge.set_function(functools.partial(self._total, state))

    @classmethod
    def of(cls, provider: str, env: str) -> _SandboxGauges:
        key = (provider, env)
        if key not in cls._by_labels:
            cls._by_labels[key] = cls(provider, env)
        return cls._by_labels[key]

    def watch(self, pool: SandboxPool) -> None:
        self._pools.add(pool)

    def _total(self, state: str) -> int:
        return sum(pool.count(state) for pool in list(self._pools))
