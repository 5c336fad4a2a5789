"""Prometheus metrics of a run: sandboxes, leases, failures, episodes, the buffer, event-loop lag.

Metrics live in each process's default registry, labelled by provider and environment, so
several pools in one process add up; the driver's `/metrics` gathers every process's figures
(`orchestrator.metrics_hub`).
"""

from __future__ import annotations

import asyncio
import logging
import time

from prometheus_client import Counter, Gauge, Histogram

from trainers.trajectory import GroupSummary

LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0)

SANDBOXES = Gauge("hillclimb_sandboxes", "Sandboxes held by pools, by state.", ["provider", "env", "state"])
CREATE_SECONDS = Histogram(
    "hillclimb_sandbox_create_seconds", "Provider create() call time.", ["provider"], buckets=LATENCY_BUCKETS
)
READY_SECONDS = Histogram(
    "hillclimb_sandbox_ready_seconds", "From create() to a passing health check.", ["provider"], buckets=LATENCY_BUCKETS
)
DESTROY_SECONDS = Histogram(
    "hillclimb_sandbox_destroy_seconds", "Provider destroy() call time.", ["provider"], buckets=LATENCY_BUCKETS
)
LEASE_WAIT_SECONDS = Histogram(
    "hillclimb_lease_wait_seconds", "Time a lease() waited for a sandbox.", ["provider", "env"], buckets=LATENCY_BUCKETS
)
FAILURES = Counter("hillclimb_sandbox_failures_total", "Sandbox failures, by error type.", ["provider", "type"])
EPISODES = Counter(
    "hillclimb_episodes_total", "Finished episodes, by split and done reason.", ["env", "split", "done_reason"]
)
ENV_STEPS = Counter("hillclimb_env_steps_total", "Policy turns taken in environments.", ["env"])
TOKENS = Counter("hillclimb_tokens_total", "Trajectory tokens, by role.", ["env", "role"])
STALENESS = Histogram(
    "hillclimb_staleness_versions",
    "Learner version minus the sampling version of consumed groups.",
    buckets=(0, 1, 2, 3, 4, 6, 8, 16),
)
BUFFER_DEPTH = Gauge("hillclimb_buffer_depth_groups", "GRPO groups waiting in the trajectory buffer.")
TRAIN = Gauge("hillclimb_train", "The training loop's latest figures (see metrics.jsonl).", ["kind", "name"])
LOOP_LAG = Gauge("hillclimb_event_loop_lag_seconds", "How late the event loop ran a timer it was asked to run.")

SANDBOX_STATES = ("starting", "ready", "leased", "destroying")


def record_group(group: GroupSummary) -> None:
    """Count a completed group's episodes, turns and tokens by role."""
    for t in group.episodes:
        EPISODES.labels(env=t.env, split=t.split, done_reason=t.done_reason.value).inc()
        ENV_STEPS.labels(env=t.env).inc(t.turns)
        for role, count in t.tokens.items():
            TOKENS.labels(env=t.env, role=role).inc(count)


def start_loop_lag_monitor(interval_s: float = 0.5) -> asyncio.Task[None]:
    """Measure the running event loop's lag until the task is cancelled: a blocked loop shows
    up here before anywhere else."""
    task = asyncio.get_running_loop().create_task(_monitor_loop_lag(interval_s), name="loop-lag-monitor")
    task.add_done_callback(_report_unexpected_end)
    return task


async def _monitor_loop_lag(interval_s: float) -> None:
    while True:
        start = time.perf_counter()
        await asyncio.sleep(interval_s)
        LOOP_LAG.set(max(0.0, time.perf_counter() - start - interval_s))


def _report_unexpected_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        logging.getLogger("hillclimb.orchestrator.metrics").error(
            "the event-loop lag monitor stopped", exc_info=task.exception()
        )
