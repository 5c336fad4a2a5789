"""How a benchmark's figures read in the tables rendered from its result file.

A figure with repetitions reads as its median with the range beside it, `0.47 s (0.40–0.64)`,
so a reader sees the spread without opening the file; each table closes with a line naming
the commit, the date and the host's load the figures were taken under.
"""

from __future__ import annotations

import statistics
from typing import Any

__all__ = ["markdown_table", "median_range", "provenance"]


def median_range(samples: list[float], digits: int = 2, scale: float = 1.0) -> str:
    """`median (min–max)` of `samples` times `scale`; a lone sample reads as itself."""
    values = [s * scale for s in samples]
    median = f"{statistics.median(values):.{digits}f}"
    if len(values) == 1:
        return median
    return f"{median} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def provenance(record: dict[str, Any], loads: list[float]) -> str:
    """The line under a table: commit, date, machine and the 1-minute load average over the run."""
    machine = record["machine"]
    load = median_range(loads) if loads else "not recorded"
    return (
        f"Commit `{record['commit']}`, {record['date']}, {machine['cpus']} CPUs; "
        f"host load (1-minute average) {load} over the run."
    )
