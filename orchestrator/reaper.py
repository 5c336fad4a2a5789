"""Destroy sandboxes that outlived their purpose: past their time-to-live, or owned by a
run that is gone (its driver crashed or was killed; see providers.liveness).
`hillclimb sandbox reap` runs one pass.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from pydantic import BaseModel, Field

from orchestrator.runs import liveness_for
from providers.base import Sandbox, SandboxProvider
from providers.errors import ProviderError
from providers.liveness import RunLiveness, RunState


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
    liveness: RunLiveness | None = None,
) -> ReapReport:
    """One pass over the provider's sandboxes (optionally only those matching `selector`),
    judging runs by `liveness` (default: where the provider's runs beat)."""
    liveness = liveness_for(provider) if liveness is None else liveness
    report = ReapReport()
    now = time.time()
    states: dict[str, RunState] = {}

    def state_once(run: str) -> RunState:  # one look per run and pass
        if run not in states:
            states[run] = liveness.state(run)
        return states[run]

    for sandbox in await provider.list(selector):
        report.examined += 1
        why = await asyncio.to_thread(verdict, sandbox, now, state_once)  # a state may be an API call
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
                await asyncio.to_thread(liveness.forget_gone, run)
    return report
