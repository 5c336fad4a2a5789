"""Shared helpers for the benchmarks: summary statistics, machine facts, result files.

Every benchmark prints a table and writes `bench/results/<name>.json` holding its
config, the machine, the commit and {median, mean, std, min, max} per measured case.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
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


def write_result(name: str, config: dict[str, Any], results: Any, path: Path | None = None) -> Path:
    """The result file: `path`, or bench/results/<name>.json."""
    path = path or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "commit": commit(),
        "machine": machine(),
        "config": config,
        "results": results,
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def print_table(headers: list[str], rows: list[list[Any]]) -> None:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))
        if n == 0:
            print("  ".join("-" * w for w in widths))


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
