"""The ledger: every completed trajectory, on disk, before anyone is told it exists.

    <run>/ledger/groups/<group>.parquet   one file per GRPO group, one row per trajectory
    <run>/ledger/events.jsonl             what happened to each group afterwards:
                                          {"group", "event": "consumed", "step"} or {"event": "dropped", "reason"}

A group's file is written to a temporary name, fsynced and renamed, so it is either
whole or absent; events are appended and fsynced. The ledger is the source of truth:
a restarted run reads it to learn which groups exist, which a learner step already
used, and which are still waiting, so nothing is lost or used twice.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from trainers.trajectory import DoneReason, Trajectory, TrajectoryGroup

SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("group_id", pa.string()),
        ("sample_index", pa.int32()),
        ("task_id", pa.string()),
        ("env", pa.string()),
        ("split", pa.string()),
        ("seed", pa.int64()),
        ("policy_version", pa.int64()),
        ("token_ids", pa.list_(pa.int32())),
        ("roles", pa.list_(pa.int8())),
        ("logprobs", pa.list_(pa.float64())),
        ("reward", pa.float64()),
        ("done_reason", pa.string()),
        ("turns", pa.int32()),
        ("parse_errors", pa.int32()),
        ("metadata", pa.string()),
    ]
)


def _file_name(group_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", group_id) + ".parquet"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Ledger:
    def __init__(self, run_dir: str | Path) -> None:
        self.root = Path(run_dir) / "ledger"
        self.groups_dir = self.root / "groups"
        self.groups_dir.mkdir(parents=True, exist_ok=True)
        self.events_path = self.root / "events.jsonl"

    # -- writing ------------------------------------------------------------------------

    def append(self, group: TrajectoryGroup) -> None:
        """Durably record a completed group (idempotent: the same group id overwrites itself)."""
        rows = [_row(t) for t in group.trajectories]
        table = pa.Table.from_pylist(rows, schema=SCHEMA)
        final = self.groups_dir / _file_name(group.group_id)
        tmp = final.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            pq.write_table(table, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        _fsync_dir(self.groups_dir)

    def record(self, group_ids: list[str], event: str, **fields: Any) -> None:
        """Append an event ('queued' for a learner, 'consumed' with a learner step, 'dropped' with a
        reason) for each group."""
        with open(self.events_path, "a") as f:
            for group_id in group_ids:
                f.write(json.dumps({"group": group_id, "event": event, **fields}) + "\n")
            f.flush()
            os.fsync(f.fileno())

    # -- reading ------------------------------------------------------------------------

    def group_ids(self) -> set[str]:
        return {_group_id_of(p) for p in self.groups_dir.glob("*.parquet")}

    def events(self) -> list[dict[str, Any]]:
        if not self.events_path.exists():
            return []
        events = []
        for line in self.events_path.read_text().splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:  # a torn last line from a crash mid-append: it never happened
                continue
        return events

    def settled(self, as_of_step: int | None = None) -> set[str]:
        """Groups dropped, or consumed by a learner step ≤ `as_of_step` (None: any step)."""
        return _settled(self.events(), as_of_step)

    def read_group(self, group_id: str) -> TrajectoryGroup:
        table = pq.read_table(self.groups_dir / _file_name(group_id), schema=SCHEMA)
        return TrajectoryGroup.of([_trajectory(row) for row in table.to_pylist()])

    def pending(self, as_of_step: int | None = None) -> list[TrajectoryGroup]:
        """Groups queued for a learner and not yet settled: what a resumed buffer must serve again.
        Groups recorded for other uses (oracle transcripts, evaluations) are never pending."""
        events = self.events()
        queued = {e["group"] for e in events if e["event"] == "queued"}
        return [self.read_group(g) for g in sorted(queued - _settled(events, as_of_step))]

    def trajectories(self) -> list[Trajectory]:
        return [t for g in sorted(self.group_ids()) for t in self.read_group(g).trajectories]


def _settled(events: list[dict[str, Any]], as_of_step: int | None) -> set[str]:
    return {
        e["group"]
        for e in events
        if e["event"] == "dropped"
        or e["event"] == "consumed"
        and (as_of_step is None or e.get("step", 0) <= as_of_step)
    }


def _group_id_of(path: Path) -> str:
    return pq.read_table(path, columns=["group_id"]).column("group_id")[0].as_py()


def _row(t: Trajectory) -> dict[str, Any]:
    row = t.model_dump(exclude={"metadata"})
    row["done_reason"] = t.done_reason.value
    row["metadata"] = json.dumps(t.metadata)
    return row


def _trajectory(row: dict[str, Any]) -> Trajectory:
    row = dict(row)
    row["metadata"] = json.loads(row["metadata"])
    row["done_reason"] = DoneReason(row["done_reason"])
    return Trajectory.model_validate(row)
