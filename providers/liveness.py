"""Which runs are alive, asked by a reaper that may live in another process or pod.

Every process that holds a run's sandboxes beats while it holds them. A run is alive while
any of its beats is; gone when it has beats and none is alive (its driver died: its sandboxes
are orphans); unknown when it has none to look at, and then only their time-to-live applies.
On one host the beats are files (orchestrator.heartbeats); a provider whose sandboxes outlive the
driver's host names its own as `SandboxProvider.run_liveness` (Kubernetes: a Lease per process).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol


class RunState(StrEnum):
    ALIVE = "alive"
    GONE = "gone"
    UNKNOWN = "unknown"


class Beat(Protocol):
    def stop(self) -> None:
        """Stop beating and remove the beat: a clean exit leaves nothing for a reaper to judge."""
        ...


class RunLiveness(Protocol):
    def beat(self, run_id: str) -> Beat:
        """Start beating for `run_id` (before its first sandbox is made) until `stop()`."""
        ...

    def state(self, run_id: str) -> RunState: ...

    def forget_gone(self, run_id: str) -> None:
        """Remove the dead beats of `run_id`, once its sandboxes are reaped."""
        ...
