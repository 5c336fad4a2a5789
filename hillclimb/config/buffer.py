"""The trajectory buffer's settings, apart from the buffer (whose ledger loads pyarrow), so the
run config can be read and checked without it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class BufferConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    capacity_groups: int = Field(default=64, ge=1)
    """Groups queued before `put` blocks (back-pressure on rollouts)."""
    max_staleness: int = Field(default=0, ge=0)
    """A group sampled by policy version v is usable at learner version ≤ v + max_staleness (0: synchronous)."""
