"""`DIR/history.jsonl`: one line per candidate, written when its decision is made; and
`DIR/optimize.json`, the settings a rerun must share to resume.

A line: iteration, proposer and its note, the candidate's text and hash, status (`accepted`,
`rejected`, `invalid`, or `skipped` when the proposer had nothing) and why, its train and
validation scores beside the incumbent's, the incumbent's hash after the decision, and the wall
time. Line 0 is the initial skill.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hillclimb.errors import ConfigError


class OtherOptimizationError(ConfigError):
    """The output directory holds an optimization run with other settings."""


@dataclass
class History:
    path: Path
    records: list[dict[str, Any]]

    @classmethod
    def open(cls, out: Path) -> History:
        path = out / "history.jsonl"
        if not path.exists():
            return cls(path, [])
        lines = path.read_text().splitlines()
        records = []
        for line in lines:
            try:
                records.append(json.loads(line))
            except ValueError:
                break  # a line cut short by a crash: that candidate is decided again
        return cls(path, records)

    def append(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()

    @property
    def next_iteration(self) -> int:
        return len(self.records)

    def incumbent(self) -> str | None:
        """The skill the last decision kept, or None before the initial one is recorded."""
        if not self.records:
            return None
        kept = self.records[-1]["incumbent_sha"]
        return next(r["text"] for r in reversed(self.records) if r["sha"] == kept)


def check_settings(out: Path, settings: dict[str, Any]) -> None:
    """Write `optimize.json`, or check that the one there matches (`iterations` may differ: a
    rerun with more continues)."""
    path = out / "optimize.json"
    if path.exists():
        earlier = json.loads(path.read_text())
        changed = sorted(
            k for k in settings.keys() | earlier.keys() if k != "iterations" and settings.get(k) != earlier.get(k)
        )
        if changed:
            raise OtherOptimizationError(
                f"{out} holds an optimization with other settings ({', '.join(changed)}): "
                "give another --out, or the same settings to resume it"
            )
    path.write_text(json.dumps(settings, indent=2) + "\n")
