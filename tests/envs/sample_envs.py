"""Tiny environments for the runtime's tests: a counter in sync and async form, plus knobs
that make a step slow, block, hang or raise, and MCP tools that succeed, fail or take a `name`.

`Calls` counts factory calls and closes across all instances, so a test can prove that a
refused client never cost an environment and that every session's instance was closed.
"""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime
from typing import Literal

from envs.authoring.base import Action, Environment, Observation, State, tool


class Calls:
    """Process-wide counters; the `calls` fixture resets them before each test."""

    created = 0
    closed = 0
    gate = threading.Event()  # a "block" step waits on it (in its session thread)
    entered = threading.Event()  # set when a "block" or "hang" step has started

    @classmethod
    def reset(cls) -> None:
        cls.created = cls.closed = 0
        cls.gate = threading.Event()
        cls.entered = threading.Event()


class CountAction(Action):
    op: Literal["add", "raise", "timeout", "sleep", "block", "hang", "big", "stamp"] = "add"
    amount: int = 1
    seconds: float = 0.0


class CountObservation(Observation):
    total: int = 0
    note: str = ""


class CountState(State):
    total: int = 0


class CounterEnv(Environment[CountAction, CountObservation, CountState]):
    """Adds numbers; the episode is done at 10. Sync: its steps run in the session's thread."""

    SUPPORTS_CONCURRENT_SESSIONS = True

    def __init__(self) -> None:
        Calls.created += 1
        self._state = CountState()

    def reset(self, seed: int | None = None, episode_id: str | None = None, start: int = 0) -> CountObservation:
        self._state = CountState(episode_id=episode_id, total=start)
        return CountObservation(total=start, note=f"seed={seed}")

    def step(self, action: CountAction, timeout_s: float | None = None) -> CountObservation:
        if action.op == "raise":
            raise ValueError("boom: the environment failed")
        if action.op == "timeout":
            raise TimeoutError("the environment's own deadline passed")
        if action.op == "sleep":
            time.sleep(action.seconds)
        if action.op == "block":
            Calls.entered.set()
            Calls.gate.wait(60)  # the `calls` fixture opens it at the test's end
        if action.op == "stamp":
            at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)  # not a JSON type: the server must still send it
            return CountObservation(total=self._state.total, metadata={"at": at})
        if action.op == "big":  # a reply of a chosen size: no reward, no metadata
            return CountObservation(total=self._state.total, note="x" * action.amount)
        return self._advance(action.amount, action.op)

    def _advance(self, amount: int, note: str) -> CountObservation:
        self._state.total += amount
        self._state.step_count += 1
        done = self._state.total >= 10
        return CountObservation(
            total=self._state.total,
            note=note,
            reward=float(amount),
            done=done,
            metadata={"step": self._state.step_count},
        )

    @property
    def state(self) -> CountState:
        return self._state

    def close(self) -> None:
        Calls.closed += 1

    @tool
    def add(self, amount: int) -> dict:
        """Add `amount` to the total and return it."""
        self._state.total += amount
        return {"total": self._state.total}

    @tool
    def greet(self, name: str, punctuation: Literal["!", "?"] = "!") -> str:
        """Greet someone (a tool argument called `name`, and a Literal under postponed annotations)."""
        return f"hello {name}{punctuation}"

    @tool
    def explode(self) -> str:
        """A tool that always fails."""
        raise RuntimeError("tool exploded")

    @tool
    async def nap(self, seconds: float) -> str:
        """An async tool that takes its time."""
        await asyncio.sleep(seconds)
        return "rested"

    @tool
    async def peek(self) -> dict:
        """An async tool: the current total."""
        await asyncio.sleep(0)
        return {"total": self._state.total}


class AsyncCounterEnv(CounterEnv):
    """The same counter with async reset and step: they run on the server's event loop."""

    async def reset_async(
        self, seed: int | None = None, episode_id: str | None = None, start: int = 0
    ) -> CountObservation:
        return self.reset(seed=seed, episode_id=episode_id, start=start)

    async def step_async(self, action: CountAction, timeout_s: float | None = None) -> CountObservation:
        if action.op == "sleep":
            await asyncio.sleep(action.seconds)
            return self._advance(action.amount, "slept")
        if action.op == "hang":
            Calls.entered.set()
            await asyncio.Event().wait()
        return self.step(action)


class SoloEnv(CounterEnv):
    """Not safe to run twice in one process: the server caps it at one session."""

    SUPPORTS_CONCURRENT_SESSIONS = False


class ReservedToolEnv(CounterEnv):
    """Publishes a tool named like a lifecycle message: every session's creation must fail cleanly."""

    @tool(name="reset")
    def sneaky(self) -> str:
        return "agents must never reset"


def broken_factory() -> CounterEnv:
    raise RuntimeError("no GPU today")
