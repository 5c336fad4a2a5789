"""Synchronous environments at the speed of async ones, without giving up what the thread buys:
calls run inline once proven short, a slow one sends its class back to the thread, a class slow
from the start never stalls other sessions, and an inline call that hangs is cut at the step
timeout while the server serves on."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from envs.authoring.base import Action, Environment, Observation, State
from envs.server.inline import FIRST_PROOF
from hillclimb.errors import ExecutionError


class NapAction(Action):
    nap_s: float = 0.0


class NapObservation(Observation):
    on_main_thread: bool = False


class NapEnv(Environment[NapAction, NapObservation, State]):
    """A synchronous step that sleeps as long as it is asked, and says where it ran."""

    SUPPORTS_CONCURRENT_SESSIONS = True

    def reset(self, seed: int | None = None, episode_id: str | None = None, **kwargs: Any) -> NapObservation:
        return NapObservation()

    def step(self, action: NapAction, timeout_s: float | None = None, **kwargs: Any) -> NapObservation:
        if action.nap_s:
            time.sleep(action.nap_s)
        return NapObservation(on_main_thread=threading.current_thread() is threading.main_thread())

    @property
    def state(self) -> State:
        return State()


async def _steps(client: Any, n: int, nap_s: float = 0.0) -> list[bool]:
    return [(await client.step({"nap_s": nap_s})).observation["on_main_thread"] for _ in range(n)]


async def _until_inline(env: Any, inline: Any, limit: int = 5000) -> int:
    """Steps taken until the class runs inline (a busy host's long calls restart the proof)."""
    for taken in range(1, limit + 1):
        await _steps(env, 1)
        if inline.inline:
            return taken
    raise AssertionError(f"not inline after {limit} short steps")


async def test_short_calls_run_inline_once_proven_and_a_slow_one_sends_them_back(start_server) -> None:
    served = await start_server(NapEnv)
    inline = served.server.inline
    async with served.client() as env:
        await env.reset()
        assert await _until_inline(env, inline) >= FIRST_PROOF - 1  # the reset counts as one call
        assert any(await _steps(env, 5))  # proven: inline
        await _steps(env, 1, nap_s=0.02)  # slow, inline: the class goes back to the thread
        assert not inline.inline and inline.demotions == 1
        assert inline._proof == 2 * FIRST_PROOF  # and must prove itself twice as long
        assert await _until_inline(env, inline) >= 2 * FIRST_PROOF


async def test_a_class_slow_from_the_start_never_stalls_other_sessions(start_server) -> None:
    served = await start_server(NapEnv)
    async with served.client() as slow, served.client() as other:
        await slow.reset()
        await other.reset()
        stepping = asyncio.ensure_future(_steps(slow, 10, nap_s=0.05))
        replies = 0
        while not stepping.done():
            await other.state()
            replies += 1
        assert not any(await stepping)
    assert not served.server.inline.inline
    # Had the naps blocked the loop, the other session would be answered only between them
    # (about once a step); on the thread it is answered all along. Counted, not timed: the
    # stall itself is measured by bench.step_stall.
    assert replies > 50, f"another session got only {replies} replies in 10 slow steps"


async def test_an_inline_call_that_hangs_is_cut_at_the_step_timeout(start_server) -> None:
    served = await start_server(NapEnv, step_timeout_s=0.3)
    async with served.client() as env, served.client() as other:
        await env.reset()
        await other.reset()
        await _until_inline(env, served.server.inline)
        start = time.perf_counter()
        with pytest.raises(ExecutionError, match="ran past the step timeout"):
            await env.step({"nap_s": 30})
        assert time.perf_counter() - start < 15  # not the 30 s nap
        assert (await other.step({})).observation is not None  # the server serves on


async def test_inline_calls_can_be_switched_off(start_server) -> None:
    served = await start_server(NapEnv, inline_sync_calls=False)
    async with served.client() as env:
        await env.reset()
        assert not any(await _steps(env, FIRST_PROOF + 10))
    assert served.server.inline is None
