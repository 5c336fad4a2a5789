"""Where a run's wall time went, by phase: the `timings` section of summary.json.

A phase is timed each time it runs (`with timer.phase("eval"): ...`), its seconds summed and its
runs counted, so `eval_s` is every evaluation together and `eval_n` how many there were. The
phases `Trainer.run` times do not overlap, so what they leave of `total_s` (`other_s`) is the
loop's own bookkeeping: progress bars, metrics.jsonl, the step's scheduling.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

__all__ = ["PhaseTimer"]


class PhaseTimer:
    def __init__(self) -> None:
        self.started = time.monotonic()
        self.seconds: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block as one run of `name` (counted even when it raises: a failed phase took its time)."""
        began = time.monotonic()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.monotonic() - began
            self.counts[name] = self.counts.get(name, 0) + 1

    def timings(self) -> dict[str, float | int]:
        """`<phase>_s` (summed) and `<phase>_n` (runs) for each phase, then `other_s` and `total_s` since the start."""
        total = time.monotonic() - self.started
        out: dict[str, float | int] = {}
        for name, seconds in self.seconds.items():
            out[f"{name}_s"] = round(seconds, 3)
            out[f"{name}_n"] = self.counts[name]
        out["other_s"] = round(total - sum(self.seconds.values()), 3)
        out["total_s"] = round(total, 3)
        return out
