"""Destroy sandboxes that outlived their purpose: past their time-to-live, or owned by a
run that is gone (its driver crashed or was killed; see providers.liveness).
`hillclimb sandbox reap` runs one pass; with `--dry-run` it only says what it would destroy
and why. Every provider is reaped by this code, through its `list` and `destroy`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Literal

from pydantic import BaseModel, Field

from hillclimb.provider_errors import ProviderError
from orchestrator.heartbeats import liveness_for
from providers.contract import Sandbox, SandboxProvider
from providers.liveness import RunLiveness, RunState

_STATE_TEXT = {
    RunState.ALIVE: "is alive",
    RunState.GONE: "is gone",
    RunState.UNKNOWN: "has no heartbeat to judge by",
}


class Doomed(BaseModel):
    """A sandbox a pass destroys (or, dry, would destroy), with what decided it."""

    id: str
    reason: Literal["expired", "orphaned"]
    run_id: str | None
    """The run it belongs to; None: it carries no run label."""
    run_state: RunState | None
    """Its run's liveness when judged; None without a run."""
    age_s: float
    """Seconds since it was created."""
    expired_for_s: float | None
    """Seconds past its time-to-live; None: not expired (its run is gone)."""

    def why(self) -> str:
        """`expired 40 s ago; run r1 is alive; age 1 h 1 min`, or `run r2 is gone; age 5 min`."""
        state = _STATE_TEXT[self.run_state or RunState.UNKNOWN]
        run = "no run" if self.run_id is None else f"run {self.run_id} {state}"
        expired = [f"expired {_duration(self.expired_for_s)} ago"] if self.expired_for_s is not None else []
        return "; ".join([*expired, run, f"age {_duration(self.age_s)}"])


class ReapReport(BaseModel):
    examined: int = 0
    doomed: list[Doomed] = Field(default_factory=list)
    """Destroyed, or (dry) to be destroyed, in the order listed."""
    failed: dict[str, str] = Field(default_factory=dict)
    """Sandbox id → why its destroy failed."""

    @property
    def expired(self) -> list[str]:
        return [d.id for d in self.doomed if d.reason == "expired"]

    @property
    def orphaned(self) -> list[str]:
        return [d.id for d in self.doomed if d.reason == "orphaned"]

    @property
    def destroyed(self) -> int:
        return len(self.doomed) - len(self.failed)


def judge(sandbox: Sandbox, now: float, state: RunState | None) -> Doomed | None:
    """Why `sandbox` goes (expired first, then an orphan of a gone run), or None to keep it."""
    expires = sandbox.expires_at
    expired = sandbox.expired(now)
    if not expired and state is not RunState.GONE:
        return None
    return Doomed(
        id=sandbox.id,
        reason="expired" if expired else "orphaned",
        run_id=sandbox.run_id,
        run_state=state,
        age_s=max(0.0, now - sandbox.created_at.timestamp()),
        expired_for_s=now - expires if expired and expires is not None else None,
    )


async def reap(
    provider: SandboxProvider,
    *,
    selector: dict[str, str] | None = None,
    dry_run: bool = False,
    liveness: RunLiveness | None = None,
    now: float | None = None,
) -> ReapReport:
    """One pass over the provider's sandboxes (optionally only those matching `selector`),
    judging runs by `liveness` (default: where the provider's runs beat) and time-to-live by
    `now` (default: the clock). A dry pass destroys and forgets nothing."""
    liveness = liveness_for(provider) if liveness is None else liveness
    report = ReapReport()
    now = time.time() if now is None else now
    states: dict[str, RunState] = {}
    for sandbox in await provider.list(selector):
        report.examined += 1
        run = sandbox.run_id
        if run is not None and run not in states:  # one look per run and pass; it may be an API call
            states[run] = await asyncio.to_thread(liveness.state, run)
        doomed = judge(sandbox, now, states.get(run) if run is not None else None)
        if doomed is None:
            continue
        report.doomed.append(doomed)
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


def _duration(seconds: float) -> str:
    """`42 s`, `5 min`, `3 h 20 min`, `2 d 4 h`: two units at most."""
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"
