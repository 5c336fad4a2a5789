"""The ledger: every completed trajectory, durable before anyone is told it exists.

    <ledger>/groups/<group>.parquet          one file per GRPO group, one row per trajectory
    <ledger>/events/<group>.<event>.json     what happened to a group afterwards: queued for a
                                             learner; consumed, with the learner step; dropped,
                                             with the reason
    <ledger>/events.jsonl                    the same events, appended by runs before this
                                             layout: still read, never written

`<ledger>` is a directory (`<run dir>/ledger` by default) or a prefix on shared storage,
opened with pyarrow's filesystems (`hillclimb.config.ledger` says which are accepted).
Every write is whole or absent: on a local disk through a temporary name, fsynced and
renamed; on an object store as one upload, which becomes visible only once complete. Object
stores cannot append, so each event is an object of its own, named by its group and kind: a
group is queued once and dropped at most once, but a run resumed from an earlier checkpoint
consumes again what only the lost steps had consumed, and that newer record replaces the one
of the abandoned steps. The ledger is the source of truth: a restarted run reads it to learn
which groups exist, which a learner step already used, and which are still waiting, so
nothing is lost or used twice.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from hillclimb.errors import ConfigError
from trainers.trajectory import DoneReason, Trajectory, TrajectoryGroup

T = TypeVar("T")
EVENTS = ("queued", "consumed", "dropped")
OBJECT_STORES: tuple[type[pafs.FileSystem], ...] = (pafs.S3FileSystem, pafs.GcsFileSystem)
IO_THREADS = 16
"""Files read or uploaded at once: an object store answers each request in milliseconds, so a
resumed run reading thousands of them one by one would wait minutes."""

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


@dataclass(frozen=True)
class EpisodeEntry:
    """One episode as a listing shows it: which it is and how it ended, without its tokens."""

    group_id: str
    sample_index: int
    task_id: str
    split: str
    policy_version: int
    reward: float
    done_reason: DoneReason
    turns: int


ENTRY_COLUMNS = [name for name in EpisodeEntry.__dataclass_fields__]
"""The columns a listing reads: none of the token, role, log-prob or metadata columns that make
up nearly all of a group's bytes."""


def _stem(group_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", group_id)


def _open(location: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and the root path inside it. A plain path is taken as is (no URI parsing:
    run directories may hold spaces)."""
    if "://" not in location:
        return pafs.LocalFileSystem(), str(Path(location).absolute())
    try:
        fs, root = pafs.FileSystem.from_uri(location)
    except (pa.ArrowInvalid, OSError) as e:
        raise ConfigError(f"cannot open the ledger at {location} (run.ledger_uri): {e}") from e
    if not isinstance(fs, (pafs.LocalFileSystem, *OBJECT_STORES)):
        raise ConfigError(
            f"the ledger cannot live on {type(fs).__name__} ({location}): it needs a local disk or an "
            "object store (s3, gs) to make each write whole or absent"
        )
    return fs, root.rstrip("/")


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _in_threads(fn: Callable[[str], T], items: Iterable[str]) -> list[T]:
    with ThreadPoolExecutor(IO_THREADS) as pool:
        return list(pool.map(fn, items))


class Ledger:
    def __init__(self, location: str | Path) -> None:
        """`location`: a directory, or a pyarrow filesystem URI (`file://`, `s3://`, `gs://`)."""
        self.location = str(location)
        self.fs, self.root = _open(self.location)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)
        self.groups_dir = f"{self.root}/groups"
        self.events_dir = f"{self.root}/events"
        self.legacy_events_path = f"{self.root}/events.jsonl"
        for directory in (self.groups_dir, self.events_dir):
            self.fs.create_dir(directory, recursive=True)

    # -- writing ------------------------------------------------------------------------

    def append(self, group: TrajectoryGroup) -> None:
        """Durably record a completed group (idempotent: the same group id overwrites itself)."""
        table = pa.Table.from_pylist([_row(t) for t in group.trajectories], schema=SCHEMA)
        sink = pa.BufferOutputStream()  # whole in memory first: an upload is then all or nothing
        pq.write_table(table, sink)
        self._write_whole({self._group_path(group.group_id): sink.getvalue().to_pybytes()})

    def record(self, group_ids: list[str], event: str, **fields: Any) -> None:
        """Record an event ('queued' for a learner, 'consumed' with a learner step, 'dropped' with a
        reason) for each group."""
        if event not in EVENTS:
            raise ValueError(f"unknown ledger event {event!r}: one of {', '.join(EVENTS)}")
        self._write_whole(
            {
                f"{self.events_dir}/{_stem(g)}.{event}.json": json.dumps(
                    {"group": g, "event": event, **fields}
                ).encode()
                for g in group_ids
            }
        )

    def _write_whole(self, files: dict[str, bytes]) -> None:
        """Each file whole or absent, even if the process dies midway."""
        if not self.local:  # an object appears only when its upload completes
            _in_threads(lambda path: self._upload(path, files[path]), files)
            return
        for path, data in files.items():
            _write_synced(path + ".tmp", data)
        for path in files:
            os.replace(path + ".tmp", path)
        for directory in {os.path.dirname(path) for path in files}:
            _fsync_dir(directory)

    def _upload(self, path: str, data: bytes) -> None:
        with self.fs.open_output_stream(path) as f:
            f.write(data)

    # -- reading ------------------------------------------------------------------------

    def _files(self, directory: str, suffix: str) -> list[str]:
        """Complete files only: a temporary name left by a crash never counts."""
        found = self.fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True))
        return sorted(f.path for f in found if f.type == pafs.FileType.File and f.path.endswith(suffix))

    def _read(self, path: str) -> bytes:
        with self.fs.open_input_stream(path) as f:
            return f.read()

    def _group_path(self, group_id: str) -> str:
        return f"{self.groups_dir}/{_stem(group_id)}.parquet"

    def group_ids(self) -> set[str]:
        return set(_in_threads(self._group_id_of, self._files(self.groups_dir, ".parquet")))

    def _group_id_of(self, path: str) -> str:
        return pq.read_table(path, columns=["group_id"], filesystem=self.fs).column("group_id")[0].as_py()

    def events(self) -> list[dict[str, Any]]:
        """The latest event of each kind for each group (an old layout's log, then the newer files)."""
        recorded = [json.loads(data) for data in _in_threads(self._read, self._files(self.events_dir, ".json"))]
        return list({(e["group"], e["event"]): e for e in self._legacy_events() + recorded}.values())

    def _legacy_events(self) -> list[dict[str, Any]]:
        if self.fs.get_file_info(self.legacy_events_path).type != pafs.FileType.File:
            return []
        events = []
        for line in self._read(self.legacy_events_path).decode().splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:  # a torn last line from a crash mid-append: it never happened
                continue
        return events

    def settled(self, as_of_step: int | None = None) -> set[str]:
        """Groups dropped, or consumed by a learner step ≤ `as_of_step` (None: any step)."""
        return _settled(self.events(), as_of_step)

    def read_group(self, group_id: str) -> TrajectoryGroup:
        table = pq.read_table(self._group_path(group_id), schema=SCHEMA, filesystem=self.fs)
        return TrajectoryGroup.of([_trajectory(row) for row in table.to_pylist()])

    def pending(self, as_of_step: int | None = None) -> list[TrajectoryGroup]:
        """Groups queued for a learner and not yet settled: what a resumed buffer must serve again.
        Groups recorded for other uses (oracle transcripts, evaluations) are never pending."""
        events = self.events()
        queued = {e["group"] for e in events if e["event"] == "queued"}
        return _in_threads(self.read_group, sorted(queued - _settled(events, as_of_step)))

    def trajectories(self) -> list[Trajectory]:
        return [t for g in sorted(self.group_ids()) for t in self.read_group(g).trajectories]

    def entries(self) -> list[EpisodeEntry]:
        """Every episode, by group id then sample index, read from the listing's columns only
        (one dataset scan: Arrow reads the files in parallel, on an object store too)."""
        import pyarrow.dataset as pads  # a third of a second to import: only listings need it

        files = self._files(self.groups_dir, ".parquet")
        table = pads.dataset(files, schema=SCHEMA, format="parquet", filesystem=self.fs).to_table(columns=ENTRY_COLUMNS)
        entries = [EpisodeEntry(**(row | {"done_reason": DoneReason(row["done_reason"])})) for row in table.to_pylist()]
        return sorted(entries, key=lambda e: (e.group_id, e.sample_index))

    def read_episode(self, entry: EpisodeEntry) -> Trajectory:
        """The whole episode an entry lists: its group's file, and nothing else, is read."""
        return next(t for t in self.read_group(entry.group_id).trajectories if t.sample_index == entry.sample_index)


def _settled(events: list[dict[str, Any]], as_of_step: int | None) -> set[str]:
    return {
        e["group"]
        for e in events
        if e["event"] == "dropped"
        or e["event"] == "consumed"
        and (as_of_step is None or e.get("step", 0) <= as_of_step)
    }


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
