"""The Kubernetes scale simulation, small: throttled by APF-style 429s, it still finishes every
lifecycle, leaves nothing behind, waits out each Retry-After, and counts what a lifecycle costs."""

from __future__ import annotations

import pytest

from bench.k8s_scale import simulate


@pytest.mark.slow
async def test_a_throttled_run_honours_retry_after_and_leaves_nothing() -> None:
    # One seat, no queue: with 4 workers, requests past the first are refused while it is served.
    result = await simulate(lifecycles=12, concurrency=4, seats=1, queue=0, latency_s=0.01)
    assert result["throttled_429"] > 0
    assert result["shortest_wait_after_429_s"] >= 1.0  # Retry-After: 1, never retried sooner
    assert result["left_behind"] == {"pods": 0, "secrets": 0}
    answered = result["answered"]
    # Each lifecycle: create pod, create Secret, delete pod, delete Secret, delete the (absent)
    # allow-list policy; plus one policy list per minute. Retries only add to that.
    for request in ("create pods 200", "create secrets 200", "delete secrets 200"):
        assert answered[request] == 12, request
    assert answered["delete pods 200"] == answered["create pods 200"] >= 12  # a pod whose Secret was refused is removed
    assert result["requests_per_lifecycle"] >= 5.0
