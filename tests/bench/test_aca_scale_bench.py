"""The ACA scale simulation, small: throttled in front of the emulated pool, every session is
allocated, served and stopped, each 429 is waited out at least as long as its Retry-After, and a
lifecycle costs a claim, a health check and a stop when nothing is refused."""

from __future__ import annotations

import pytest

from bench.aca_scale import simulate

pytestmark = [pytest.mark.slow, pytest.mark.root]


async def test_unthrottled_a_lifecycle_is_three_requests() -> None:
    result = await simulate(lifecycles=6, concurrency=2, limit=100, latency_s=0.0)
    assert result["answered"] == {"claim 200": 6, "health 200": 6, "stopSession 200": 6}
    assert result["sessions_left"] == 0 and result["sessions_allocated"] == 6


async def test_throttled_every_session_is_stopped_and_retry_after_is_honoured() -> None:
    result = await simulate(lifecycles=6, concurrency=3, limit=1, latency_s=0.05)
    assert result["throttled_429"] > 0
    assert result["answered"]["claim 200"] == result["answered"]["stopSession 200"] == 6
    assert result["sessions_left"] == 0
    if result["shortest_wait_after_429_s"] is not None:  # a refused claim or stop, not only health polls
        assert result["shortest_wait_after_429_s"] >= 1.0
