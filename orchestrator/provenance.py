"""Where a measurement came from: the commit of this checkout, the machine and its load, and the
result-file record that carries them beside a config and its results (benchmarks, λ sweeps)."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[1]
"""The checkout this code runs from: its commit is the one a result is credited to."""
RESULTS = "bench/results"
"""Where published results live: writing one does not make the code that measured it dirty."""


def commit(project: Path = PROJECT) -> str:
    """The short hash of the checkout's HEAD (`-dirty` with uncommitted changes to tracked files
    other than results: a benchmark suite's first result file must not mark the next one's code
    dirty); "unknown" outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True, cwd=project
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", f":(exclude){RESULTS}"],
            capture_output=True,
            text=True,
            cwd=project,
        ).stdout
        return out.stdout.strip() + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "load_avg_1_5_15_min": [round(x, 2) for x in os.getloadavg()],  # as the result is written
    }


def result_record(name: str, config: dict[str, Any], results: Any, measured_at: str | None = None) -> dict[str, Any]:
    """What a result file holds: the results with their config, the commit (`measured_at` where the
    figures come from a run this checkout did not make), the machine and the date."""
    return {
        "benchmark": name,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "commit": measured_at or commit(),
        "machine": machine(),
        "config": config,
        "results": results,
    }
