"""The run config's `log` section: where a run's numbers go besides metrics.jsonl and Prometheus.

    log:
      wandb: {project: my-project, entity: my-team, mode: offline}   # absent: no W&B
      tensorboard: {dir: tb}                                        # absent: no TensorBoard
      sampled_episodes: 4                                           # per evaluation

Only pydantic here: the loggers themselves (`orchestrator.loggers`) import wandb and
tensorboardX when a run opens them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WandbLogConfig(_Section):
    """Weights & Biases (`pip install 'hillclimb[log]'`; the key comes from `wandb login` or $WANDB_API_KEY)."""

    project: str = Field(default="hillclimb", min_length=1)
    entity: str | None = None
    """Team or user the run belongs to; None: the account's default entity."""
    mode: Literal["online", "offline", "disabled"] = "online"
    """offline writes the run under `<run dir>/wandb` for a later `wandb sync`; disabled logs nothing."""


class TensorBoardLogConfig(_Section):
    """TensorBoard event files (`pip install 'hillclimb[log]'`), read by `tensorboard --logdir DIR`."""

    dir: Path | None = None
    """Where the event files go; None: `<run dir>/tensorboard`."""


class LogSection(_Section):
    wandb: WandbLogConfig | None = None
    """None: no Weights & Biases logging."""
    tensorboard: TensorBoardLogConfig | None = None
    """None: no TensorBoard event files."""
    sampled_episodes: int = Field(default=4, ge=0)
    """Held-out episodes shown as text at each evaluation (those of its first task ids: with every
    held-out task played, the same tasks each time): in `<run dir>/samples.jsonl` and in each
    logger. 0: none."""
