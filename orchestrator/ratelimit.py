"""Sandbox-creation rate limits: a token bucket per process, pluggable for cluster-wide ones.

Providers' users most often hit create-rate limits and "STARTING" storms; every pool
takes a token before each create. A Ray actor implementing `RateLimiter` makes the
limit cluster-wide (see `orchestrator.workers`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class RateLimiter(Protocol):
    async def acquire(self) -> None:
        """Return once one more creation is allowed."""
        ...


class TokenBucket:
    """`rate_per_s` tokens a second, up to `burst` saved; `acquire()` waits for one."""

    def __init__(self, rate_per_s: float, burst: int = 1) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate_per_s must be > 0 and burst >= 1")
        self.rate = rate_per_s
        self.burst = burst
        self._tokens = float(burst)
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def try_acquire(self) -> float:
        """Take a token and return 0, or return the seconds until one is due."""
        self._refill()
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        return (1 - self._tokens) / self.rate

    async def acquire(self) -> None:
        async with self._lock:  # first come, first served
            while (wait := self.try_acquire()) > 0:
                await asyncio.sleep(wait)
