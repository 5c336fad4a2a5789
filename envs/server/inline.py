"""Synchronous environment calls on the event loop, once they have proven short.

A synchronous reset or step runs on its session's thread by default, so that a slow one cannot
stall every other session. But the hop to the thread and back costs tens to hundreds of
microseconds, more than a trivial step itself: an environment whose calls keep finishing within
`FAST_S` has them run inline, on the loop, after `proof` such calls in a row (64 at first). The
first inline call longer than `SLOW_S` sends it back to the thread, and it must then prove itself
for twice as long before it returns. What a slow call costs the other sessions is one call's length per
demotion, and demotions grow rarer; an environment slow from the start never leaves its thread.

An inline call blocks the very loop that would cancel it at the step timeout, so the process's
one watchdog thread holds it to the timeout instead: it interrupts the main thread (SIGUSR1),
which raises `StepOverrun` inside the call, and the session is closed as for any late step.
Inline calls need that signal: they run only on the main thread, and only where nothing else
handles SIGUSR1.
"""

from __future__ import annotations

import itertools
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

FAST_S = 0.0005
"""Calls that return within this, `proof` of them in a row, prove a class short."""
SLOW_S = 0.002
"""An inline call longer than this sends its class back to the thread. Between the two, a call
neither proves nor disproves: a busy host preempts a short call now and then, and a stall of a
millisecond or two is what an inline class may cost the others."""
FIRST_PROOF = 64
MAX_PROOF = 1 << 20


class StepOverrun(BaseException):
    """An inline call ran past the step timeout. A BaseException, so that an environment's own
    `except Exception` cannot swallow it."""


class InlineCalls:
    """One server's decision, for its one environment class, of where sync calls run."""

    def __init__(self, limit_s: float | None) -> None:
        self.limit_s = limit_s
        self.inline = False
        self.demotions = 0
        self._streak = 0
        self._proof = FIRST_PROOF

    def usable(self) -> bool:
        """Whether the next call may run inline here and now."""
        return self.inline and threading.current_thread() is threading.main_thread() and _GUARD.ready()

    def observe(self, elapsed: float) -> None:
        """Account one finished call (inline or on a thread)."""
        if self.inline:
            if elapsed > SLOW_S:
                self.inline = False
                self.demotions += 1
                self._streak = 0
                self._proof = min(self._proof * 2, MAX_PROOF)
        elif elapsed <= FAST_S:
            self._streak += 1
            self.inline = self._streak >= self._proof
        else:
            self._streak = 0

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """`fn(*args, **kwargs)` on this (the main) thread, held to the step timeout."""
        return _GUARD.run(self.limit_s, fn, *args, **kwargs)


class _Guard:
    """The process's one watchdog over inline calls: they all run on the main thread, one at a time."""

    PERIOD_S = 0.05

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._running: tuple[int, float] | None = None
        """(id, monotonic deadline) of the inline call in progress."""
        self._overrun: int | None = None
        self._ok: bool | None = None

    def ready(self) -> bool:
        if self._ok is None:
            if signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, None):
                self._ok = False  # someone else's signal: calls stay on threads
            else:
                signal.signal(signal.SIGUSR1, self._interrupt)
                main = threading.main_thread().ident
                assert main is not None
                threading.Thread(target=self._watch, args=(main,), name="inline-call-watchdog", daemon=True).start()
                self._ok = True
        return self._ok

    def run(self, limit_s: float | None, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        deadline = time.monotonic() + limit_s if limit_s is not None else float("inf")
        self._running = (next(self._ids), deadline)
        try:
            return fn(*args, **kwargs)
        finally:
            self._running = None

    def _watch(self, main: int) -> None:
        while True:
            time.sleep(self.PERIOD_S)
            running = self._running
            if running is not None and time.monotonic() > running[1]:
                self._overrun = running[0]
                signal.pthread_kill(main, signal.SIGUSR1)

    def _interrupt(self, signum: int, frame: Any) -> None:
        running = self._running
        if running is not None and running[0] == self._overrun:  # still the late call, not a later one
            self._overrun = None
            raise StepOverrun


_GUARD = _Guard()
