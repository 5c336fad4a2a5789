"""Destroy sandboxes that outlived their purpose: past their time-to-live, or owned by a
run that is gone (its driver crashed or was killed). `hillclimb sandbox reap` runs one
pass; drivers run `reap_forever` in the background for their provider.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from pydantic import BaseModel, Field

from orchestrator.runs import RunState, forget_gone, run_state
from providers.base import Sandbox, SandboxProvider
from providers.errors import ProviderError

log = logging.getLogger("hillclimb.orchestrator.reaper")


class ReapReport(BaseModel):
    examined: int = 0
    expired: list[str] = Field(default_factory=list)
    orphaned: list[str] = Field(default_factory=list)
    failed: dict[str, str] = Field(default_factory=dict)

    @property
    def destroyed(self) -> int:
        return len(self.expired) + len(self.orphaned) - len(self.failed)


def verdict(sandbox: Sandbox, now: float, state_of: Callable[[str], RunState]) -> str | None:
    """'expired', 'orphaned', or None to keep it."""
    if sandbox.expired(now):
        return "expired"
    run = sandbox.run_id
    if run is not None and state_of(run) is RunState.GONE:
        return "orphaned"
    return None


async def reap(
    provider: SandboxProvider,
    *,
    selector: dict[str, str] | None = None,
    dry_run: bool = False,
    state_of: Callable[[str], RunState] = run_state,
) -> ReapReport:
    """One pass over the provider's sandboxes (optionally only those matching `selector`)."""
    report = ReapReport()
    now = time.time()
    states: dict[str, RunState] = {}

    def state_once(run: str) -> RunState:  # one look per run and pass
        if run not in states:
            states[run] = state_of(run)
        return states[run]

    for sandbox in await provider.list(selector):
        report.examined += 1
        why = verdict(sandbox, now, state_once)
        if why is None:
            continue
        (report.expired if why == "expired" else report.orphaned).append(sandbox.id)
        if dry_run:
            continue
        try:
            await provider.destroy(sandbox.id)
        except ProviderError as e:
            report.failed[sandbox.id] = str(e)
    if not dry_run and not report.failed:
        for run, state in states.items():
            if state is RunState.GONE:
                forget_gone(run)
    return report


async def reap_forever(provider: SandboxProvider, interval_s: float = 60.0) -> None:
    """The driver's background reaper; survives provider errors, stops on cancellation."""
    while True:
        try:
            report = await reap(provider)
            if report.expired or report.orphaned:
                log.info("reaped %d expired and %d orphaned sandboxes", len(report.expired), len(report.orphaned))
        except ProviderError as e:
            log.warning("reaping failed (will retry): %s", e)
        await asyncio.sleep(interval_s)
