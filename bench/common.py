"""Shared helpers for the benchmarks: summary statistics, machine facts, result files.

The commit, machine facts and a result file's record come from orchestrator.provenance, which
the λ sweep of `hillclimb train --ablation` writes its result with too.

Every benchmark prints a table and writes `bench/results/<name>.json` holding its
config, the machine, the commit and {median, mean, std, min, max} per measured case.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from orchestrator.provenance import commit, result_record

__all__ = [
    "RESULTS",
    "base_tree",
    "interleaved",
    "markdown_table",
    "load_over_run",
    "median_range",
    "percentile",
    "print_table",
    "result_path",
    "spread",
    "status_kib",
    "summarize",
    "write_result",
]

RESULTS = Path(__file__).parent / "results"


def summarize(samples: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(samples),
        "mean": statistics.fmean(samples),
        "std": statistics.pstdev(samples),
        "min": min(samples),
        "max": max(samples),
        "n": len(samples),
    }


def median_range(stats: dict[str, float], fmt: str = "{:,.0f}", scale: float = 1.0) -> str:
    """A summary as the tables print it: the median, then the range of the samples."""
    median, low, high = (fmt.format(stats[k] * scale) for k in ("median", "min", "max"))
    return median if low == high else f"{median} ({low}–{high})"


def spread(samples: list[float], digits: int = 2, scale: float = 1.0) -> str:
    """`median_range` of raw samples (times `scale`), to `digits` decimals."""
    return median_range(summarize([s * scale for s in samples]), f"{{:.{digits}f}}")


def load_over_run(loads: list[float]) -> str:
    """The sentence a table whose run recorded the host's 1-minute load as it went closes with."""
    return f"Host load (1-minute average) {spread(loads) if loads else 'not recorded'} over the run."


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def status_kib(field: str) -> int:
    """A kB field of this process's /proc/self/status (VmRSS, VmHWM, VmSize)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} missing from /proc/self/status")


def result_path(file_name: str, measured_at: str | None = None) -> Path:
    """Where a result goes by default: bench/results/ from a committed tree; from a dirty one, a
    temporary directory (said on stderr), so no figure of uncommitted code is ever published and
    no measurement is lost."""
    if not (measured_at or commit()).endswith("-dirty"):
        return RESULTS / file_name
    path = Path(tempfile.mkdtemp(prefix="hc-bench-dirty-")) / file_name
    print(f"the tree has uncommitted changes: {path} holds this result, not bench/results/", file=sys.stderr)
    return path


def write_result(
    name: str, config: dict[str, Any], results: Any, path: Path | None = None, measured_at: str | None = None
) -> Path:
    """The result file: `path`, or bench/results/<name>.json (see `result_path`); `measured_at` is
    the commit of figures this checkout read rather than made (a training run's)."""
    path = path or result_path(f"{name}.json", measured_at)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result_record(name, config, results, measured_at), indent=2) + "\n")
    return path


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    """The same table as `print_table` prints, for a document (bench/render.py)."""
    lines = ["| " + " | ".join(map(str, headers)) + " |", "|" + " --- |" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows])


@contextlib.contextmanager
def base_tree(commit: str) -> Iterator[tuple[str, Path]]:
    """A detached `git worktree` of `commit` for a before/after run: (its short hash, its path),
    removed on exit."""
    here = Path(__file__).resolve().parent.parent
    short = subprocess.run(
        ["git", "rev-parse", "--short", commit], cwd=here, capture_output=True, text=True, check=True
    ).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="hc-base-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), short], cwd=here, check=True)
        try:
            yield short, tree
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=here, check=True)


def interleaved(rep: int, base: Path, head: Path) -> list[tuple[str, Path]]:
    """Repetition `rep`'s order of the two sides: alternating, so neither always goes first."""
    sides = [("base", base), ("head", head)]
    return sides if rep % 2 == 0 else sides[::-1]
