"""The run config's sandbox sections: `provider` (which provider makes sandboxes, its options
checked by name at load) and `pool` (how many are kept, started and paced: `PoolConfig`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hillclimb.config.providers import options_model
from hillclimb.errors import TargetNotFoundError, validation_problems


class ProviderSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str = "local"
    """Sandbox provider: local, docker, or a plugin's name."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of the provider's constructor (e.g. docker: image)."""
    resources: dict[str, Any] = Field(default_factory=dict)
    """Per-sandbox limits: cpu, memory_mb, pids, disk_mb."""
    ttl_s: float = Field(default=3600.0, gt=0)

    @model_validator(mode="after")
    def _known_options(self) -> ProviderSection:
        try:
            options_model(self.type).model_validate(self.options)
        except TargetNotFoundError as e:
            raise ValueError(str(e)) from None
        except ValidationError as e:
            raise ValueError(f"provider {self.type!r}: {validation_problems(e, 'options.')}") from None
        return self


class PoolConfig(BaseModel):
    """Sizing and pacing of one pool."""

    model_config = ConfigDict(extra="forbid")

    min_ready: int = Field(default=0, ge=0)
    """Sandboxes kept started and idle, ready to lease without waiting."""
    max_total: int = Field(default=64, ge=1)
    """Sandboxes alive at once, starting ones included."""
    max_starting: int = Field(default=8, ge=1)
    """Sandboxes being created at once (separate from max_total: avoids creation storms)."""
    create_rate_per_s: float = Field(default=20.0, gt=0)
    """Sustained sandbox creations per second (token bucket; bursts up to max_starting). Under Ray,
    one bucket for the whole run, shared by every worker."""
    sessions_per_sandbox: int = Field(default=16, ge=1)
    """Leases one sandbox serves at once, when its environment allows concurrent sessions."""
    max_waiters: int = Field(default=4096, ge=1)
    """lease() calls allowed to wait at once; beyond it lease() fails fast (back-pressure)."""
    ready_timeout_s: float = Field(default=60.0, gt=0)
    health_timeout_s: float = Field(default=2.0, gt=0)
    """A sandbox that does not answer /health within this is retired."""
    health_max_age_s: float = Field(default=1.0, ge=0)
    """A shared sandbox checked more recently than this is handed out without a new check (0: always check)."""
    min_remaining_ttl_s: float = Field(default=120.0, ge=0)
    """A sandbox this close to its time-to-live is retired instead of leased."""
    create_retry_delay_s: float = Field(default=1.0, ge=0)
    """Wait after a create failed with a retryable error, doubling with each failure in a row up to
    `create_retry_max_delay_s`; never shorter than the error's own `delay_s` (a provider's Retry-After)."""
    create_retry_max_delay_s: float = Field(default=30.0, ge=0)
    max_consecutive_failures: int = Field(default=3, ge=1)
    """Retryable create failures in a row after which leases fail at once with the last error instead
    of waiting; creates go on at the backoff's pace, and the first success ends it."""
