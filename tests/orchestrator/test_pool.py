"""SandboxPool on real local sandboxes: warmth, liveness, limits, back-pressure, metrics."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
from prometheus_client import REGISTRY

from envs.client.handle import EnvHandle
from hillclimb.config.sandboxes import PoolConfig
from hillclimb.provider_errors import BadSpecError, CapacityError, SandboxDiedError
from orchestrator.pool import LeaseTimeoutError, PoolExhaustedError, SandboxPool
from orchestrator.ratelimit import TokenBucket
from providers.contract import Sandbox, SandboxSpec
from providers.local import LocalProvider

pytestmark = pytest.mark.root


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def _pool(
    provider: LocalProvider, env: str = "toy_terminal", *, shared: bool = True, **config: object
) -> SandboxPool:
    pool = SandboxPool(provider, SandboxSpec(env=env, run_id="pool-test"), PoolConfig(**config), shared=shared)  # type: ignore[arg-type]
    await pool.start()
    return pool


async def test_min_ready_sandboxes_are_warm_and_leases_are_fast(local_provider: LocalProvider) -> None:
    pool = await _pool(local_provider, min_ready=2)
    try:
        await pool.wait_warm(timeout_s=30)
        warm = {s.id for s in await local_provider.list()}
        assert pool.idle == 2 and len(warm) == 2
        start = time.perf_counter()
        lease = await pool.lease(timeout_s=30)
        assert lease.sandbox.id in warm  # from the warm pool, not a new sandbox
        assert time.perf_counter() - start < 10
        async with lease.handle.client() as env:
            result = await env.reset(seed=0)
        assert result.observation["prompt"]
        await lease.release()
        assert _metric("hillclimb_sandboxes", provider="local", env="toy_terminal", state="ready") == 2
    finally:
        await pool.close()
    assert await local_provider.list() == []


async def test_sandbox_gauges_are_read_when_scraped_and_pools_add_up(local_provider: LocalProvider) -> None:
    # Two pools of one provider and env (say, train and eval rollouts in one process): the gauge
    # is their sum, read from their state at scrape time, never one pool overwriting the other.
    def gauge(state: str) -> float:
        return _metric("hillclimb_sandboxes", provider="local", env="toy_terminal", state=state)

    first, second = await _pool(local_provider, min_ready=1), await _pool(local_provider, min_ready=2)
    states = ("starting", "ready", "leased", "destroying")
    try:
        await first.wait_warm(timeout_s=30)
        await second.wait_warm(timeout_s=30)
        assert gauge("ready") == first.idle + second.idle >= 3 and gauge("leased") == 0
        lease = await second.lease(timeout_s=5)
        assert gauge("leased") == 1  # no update call in between: the lease itself is what is read
        await lease.release()
        assert gauge("leased") == 0
        await first.close()
        assert all(first.count(s) == 0 for s in states)
        assert [gauge(s) for s in states] == [second.count(s) for s in states]
    finally:
        await first.close()
        await second.close()
    assert gauge("ready") == 0


async def test_shared_sandboxes_serve_up_to_capacity(local_provider: LocalProvider) -> None:
    pool = await _pool(local_provider, sessions_per_sandbox=3, max_total=4)
    try:
        leases = await asyncio.gather(*(pool.lease(timeout_s=30) for _ in range(7)))
        per_sandbox: dict[str, int] = {}
        for lease in leases:
            per_sandbox[lease.sandbox.id] = per_sandbox.get(lease.sandbox.id, 0) + 1
        assert sorted(per_sandbox.values(), reverse=True)[0] <= 3 and len(per_sandbox) == 3
        for lease in leases:
            await lease.release()
        assert len(await local_provider.list()) == 3  # shared sandboxes go back to the pool
    finally:
        await pool.close()


async def test_kept_sessions_go_to_the_next_lease_and_close_with_their_sandbox(local_provider: LocalProvider) -> None:
    pool = await _pool(local_provider, sessions_per_sandbox=2, max_total=1)
    try:
        first = await pool.lease(timeout_s=30)
        assert first.connection is None
        env = first.handle.client()
        await env.reset(seed=0, task_id="cat-app-order")
        first.keep(env)
        await first.release()
        second, third = await pool.lease(timeout_s=5), await pool.lease(timeout_s=5)
        assert second.connection is env and env.connected  # one kept session: the next lease takes it
        assert third.connection is None  # ... and nobody else, so sessions never outnumber the capacity
        result = await env.reset(seed=1, task_id="wc-app-lines")  # a fresh episode on the same session
        assert "app.log" in result.observation["prompt"]
        await third.release()
        second.mark_broken("test: misbehaved")
        second.keep(env)
        await second.release()  # a broken sandbox's session is closed, not kept
        deadline = time.monotonic() + 10  # closed in the background: the sandbox's server must answer
        while env.connected and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert not env.connected
    finally:
        await pool.close()


async def test_a_broken_sandbox_is_reported_with_its_server_log_before_it_goes(
    local_provider: LocalProvider, caplog: pytest.LogCaptureFixture
) -> None:
    pool = await _pool(local_provider, sessions_per_sandbox=2, max_total=1)
    try:
        first, second = await pool.lease(timeout_s=30), await pool.lease(timeout_s=5)
        victim = first.sandbox.id
        with open(local_provider.root / victim / "server.log", "a") as log_file:
            log_file.write("a line the server wrote\n")
        first.mark_broken("ConnectionLostError: connection lost")
        second.mark_broken("ConnectionLostError: connection lost")
        with caplog.at_level("WARNING", logger="hillclimb.orchestrator.pool"):
            await first.release()
            assert await local_provider.list() != []  # one lease still holds it: nothing reported yet
            await second.release()
            for _ in range(100):
                if not await local_provider.list():
                    break
                await asyncio.sleep(0.05)
        (record,) = [r for r in caplog.records if victim in r.getMessage()]
        message = record.getMessage()
        assert "2 lease(s) failed: 2 × ConnectionLostError: connection lost" in message
        assert message.endswith("a line the server wrote")  # the log's end, read before the sandbox went
        assert await local_provider.list() == []
    finally:
        await pool.close()


async def test_closing_the_pool_closes_kept_sessions(local_provider: LocalProvider) -> None:
    pool = await _pool(local_provider, max_total=1)
    lease = await pool.lease(timeout_s=30)
    env = lease.handle.client()
    await env.reset(seed=0)
    lease.keep(env)
    await lease.release()
    await pool.close()
    assert not env.connected and await local_provider.list() == []


async def test_single_use_sandboxes_are_fresh_per_lease_and_destroyed_after(local_provider: LocalProvider) -> None:
    pool = await _pool(local_provider, env="terminal", shared=False, min_ready=1)
    try:
        await pool.wait_warm(timeout_s=30)
        first = await pool.lease(timeout_s=30)
        kept = first.handle.client()
        await kept.reset(seed=0)
        await kept.step({"command": "echo left-behind > marker"})
        first.keep(kept)  # single-use: the session goes with its sandbox, never to the next lease
        await first.release()
        second = await pool.lease(timeout_s=30)
        assert second.sandbox.id != first.sandbox.id and second.connection is None
        async with second.handle.client() as env:
            await env.reset(seed=0)
            result = await env.step({"command": "ls marker"})
        assert "No such file" in result.observation["output"]
        await second.release()
        used = {first.sandbox.id, second.sandbox.id}
        deadline = time.monotonic() + 10
        while used & {s.id for s in await local_provider.list()} and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # destroyed in the background after release
        assert not used & {s.id for s in await local_provider.list()}
        assert not kept.connected
    finally:
        await pool.close()


async def test_dead_warm_sandbox_is_skipped_and_replaced(local_provider: LocalProvider) -> None:
    pool = await _pool(local_provider, min_ready=1, health_max_age_s=0, shared=True)
    try:
        await pool.wait_warm(timeout_s=30)
        (victim,) = await local_provider.list()
        meta_pid = local_provider._read_meta(local_provider.root / victim.id)["pid"]
        os.kill(meta_pid, signal.SIGKILL)  # the sandbox dies while it sits warm in the pool
        await asyncio.sleep(0.1)
        failures = _metric("hillclimb_sandbox_failures_total", provider="local", type="health_check")
        lease = await pool.lease(timeout_s=30)
        assert lease.sandbox.id != victim.id
        assert _metric("hillclimb_sandbox_failures_total", provider="local", type="health_check") == failures + 1
        async with lease.handle.client() as env:
            await env.reset(seed=0)
        await lease.release()
    finally:
        await pool.close()


def _count_health_checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The requests sandbox handles send (the pool's /health), recorded on their way to the real sandbox."""
    sent: list[str] = []
    real = EnvHandle.request

    async def recorded(handle: EnvHandle, path: str, **kwargs: object):  # type: ignore[no-untyped-def]
        sent.append(path)
        return await real(handle, path, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(EnvHandle, "request", recorded)
    return sent


async def test_leases_arriving_together_share_one_health_check(
    local_provider: LocalProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = await _pool(local_provider, min_ready=1, max_total=1, sessions_per_sandbox=16, health_max_age_s=0)
    try:
        await pool.wait_warm(timeout_s=30)
        sent = _count_health_checks(monkeypatch)
        leases = await asyncio.gather(*(pool.lease(timeout_s=30) for _ in range(16)))
        assert sent == ["/health"]  # not sixteen requests queued behind each other on one server
        await asyncio.gather(*(lease.release() for lease in leases))
    finally:
        await pool.close()


async def test_a_session_that_finished_its_episode_counts_as_a_health_check(
    local_provider: LocalProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = await _pool(local_provider, min_ready=1, max_total=1, health_max_age_s=1.5)
    try:
        await pool.wait_warm(timeout_s=30)
        sent = _count_health_checks(monkeypatch)
        # Checks are aged by moving their time back rather than by sleeping: no margin for a loaded host to eat.
        (slot,) = pool._slots
        slot.checked_at -= 10  # the check made at start-up is stale
        lease = await pool.lease(timeout_s=30)
        assert sent == ["/health"]
        env = lease.handle.client()
        await env.reset(seed=0)
        lease.keep(env)
        slot.checked_at -= 10  # stale again: only the release can make it fresh
        await lease.release()  # the episode's replies prove the server alive since
        await (await pool.lease(timeout_s=30)).release()
        assert sent == ["/health"]  # no second /health: the episode counted as one
    finally:
        await pool.close()


async def test_max_total_caps_and_lease_deadline_is_typed(local_provider: LocalProvider) -> None:
    pool = await _pool(local_provider, env="terminal", shared=False, max_total=1)
    try:
        held = await pool.lease(timeout_s=30)
        start = time.monotonic()
        with pytest.raises(LeaseTimeoutError, match="no terminal sandbox free"):
            await pool.lease(timeout_s=0.3)
        assert 0.25 < time.monotonic() - start < 10
        waiting = asyncio.ensure_future(pool.lease(timeout_s=30))
        await asyncio.sleep(0.05)
        await held.release()  # frees the only slot: the waiter gets a fresh sandbox
        assert (await waiting).sandbox.id != held.sandbox.id
        await (await waiting).release()
    finally:
        await pool.close()


async def test_back_pressure_when_too_many_wait(local_provider: LocalProvider) -> None:
    pool = await _pool(local_provider, env="terminal", shared=False, max_total=1, max_waiters=2)
    try:
        held = await pool.lease(timeout_s=30)
        # The second waiter waits out two destroys and two creates of local sandboxes.
        waiters = [asyncio.ensure_future(pool.lease(timeout_s=60)) for _ in range(2)]
        await asyncio.sleep(0.05)
        with pytest.raises(PoolExhaustedError):
            await pool.lease(timeout_s=5)
        await held.release()
        for waiter in waiters:
            await (await waiter).release()
    finally:
        await pool.close()


async def test_a_broken_env_target_fails_leases_instead_of_retrying_forever(local_provider: LocalProvider) -> None:
    pool = await _pool(local_provider, env="no.such.module:Env", create_retry_delay_s=0.01)
    try:
        with pytest.raises(SandboxDiedError, match="no.such.module"):
            await pool.lease(timeout_s=30)
    finally:
        await pool.close()


async def test_create_rate_is_limited() -> None:
    bucket = TokenBucket(rate_per_s=10, burst=2)
    start = time.monotonic()
    for _ in range(5):
        await bucket.acquire()
    # Two from the burst, then three more at 10/s: about 0.3 s.
    assert 0.25 < time.monotonic() - start < 5


class _FailsFirst(LocalProvider):
    """Real local sandboxes, after the first `failures` creates fail with `error`."""

    def __init__(self, error: Exception, failures: int, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.error, self.failures, self.attempts = error, failures, []

    async def create(self, spec: SandboxSpec) -> Sandbox:
        self.attempts.append(time.monotonic())
        if len(self.attempts) <= self.failures:
            raise self.error
        return await super().create(spec)


async def test_a_provider_at_capacity_is_backed_off_and_the_pool_recovers(sandbox_root, caplog) -> None:  # type: ignore[no-untyped-def]
    error = CapacityError("the engine answered 429\nits body: a long page of detail", delay_s=0.2)
    provider = _FailsFirst(error, failures=3, root=sandbox_root)
    pool = await _pool(provider, create_retry_delay_s=0.01, max_consecutive_failures=2)
    caplog.set_level("WARNING", logger="hillclimb.orchestrator.pool")
    try:
        with pytest.raises(CapacityError):  # two failures in a row: leases fail fast instead of waiting
            await pool.lease(timeout_s=30)
        lease = None
        deadline = time.monotonic() + 20
        while lease is None and time.monotonic() < deadline:
            try:
                lease = await pool.lease(timeout_s=30)
            except CapacityError:
                await asyncio.sleep(0.02)
        assert lease is not None, "the pool never recovered"
        await lease.release()
    finally:
        await pool.close()
        await provider.close()
    assert len(provider.attempts) == 4
    gaps = [b - a for a, b in zip(provider.attempts, provider.attempts[1:], strict=False)]
    assert min(gaps) >= 0.2, gaps  # never sooner than the provider asked, though the pool's own delay is 0.01
    # The whole error once a streak, then its first line: a traceback is not repeated at every retry.
    reports = [r.getMessage() for r in caplog.records if "sandbox failed" in r.getMessage()]
    assert len(reports) == 3 and "long page of detail" in reports[0], reports
    assert all(m.endswith("the engine answered 429 (as before)") for m in reports[1:]), reports


async def test_a_fatal_provider_error_poisons_the_pool_for_good(local_provider: LocalProvider) -> None:
    pool = SandboxPool(local_provider, SandboxSpec(image="python:3.11-slim"), PoolConfig(), shared=True)
    try:
        for _ in range(3):
            with pytest.raises(BadSpecError, match="no container images"):
                await pool.lease(timeout_s=5)
        assert pool._starting == 0 and pool.count("ready") == 0
    finally:
        await pool.close()
