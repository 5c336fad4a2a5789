"""Where hillclimb keeps its state on a machine: `$HILLCLIMB_HOME`, else `~/.cache/hillclimb`
(run heartbeats under `runs/`, pulled and converted models under `models/`)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["hillclimb_home"]


def hillclimb_home() -> Path:
    return Path(os.environ.get("HILLCLIMB_HOME") or Path.home() / ".cache" / "hillclimb")
