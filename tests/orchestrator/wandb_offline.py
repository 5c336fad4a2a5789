"""Read back what wandb wrote for an offline run: the records of its `run-<id>.wandb` file.

The file is wandb's transaction log, in LevelDB's log format: a 7-byte header (`:W&B`, magic,
version), then 32 KiB blocks of chunks, each `crc32 (4) | length (2) | type (1) | data`, a
record's bytes split over FIRST/MIDDLE/LAST chunks when it crosses a block. Each record is a
`wandb_internal_pb2.Record`. (wandb's own reader lives in its Go core; this one is for tests.)
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

HEADER = struct.Struct("<4sHB")
CHUNK = struct.Struct("<IHB")
BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list[Any]:
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    ident, _magic, _version = HEADER.unpack_from(data)
    assert ident == b":W&B", f"{path} is not a wandb transaction log"
    found, pending, offset = [], b"", HEADER.size
    while offset + CHUNK.size <= len(data):
        left_in_block = BLOCK - offset % BLOCK
        if left_in_block < CHUNK.size:  # zero padding at a block's end
            offset += left_in_block
            continue
        _crc, length, kind = CHUNK.unpack_from(data, offset)
        if kind == 0 or offset + CHUNK.size + length > len(data):  # the end, or a chunk still being written
            break
        piece = data[offset + CHUNK.size : offset + CHUNK.size + length]
        offset += CHUNK.size + length
        pending = piece if kind in (FULL, FIRST) else pending + piece
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            found.append(record)
    return found


def offline_run(run_dir: Path, timeout_s: float = 30.0) -> Path:
    """The one offline run wandb wrote under `run_dir` (logging there with `dir=run_dir`), once its
    log holds the run's exit record: `run.finish()` can return before wandb's core process has
    written the log out."""
    (found,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    deadline = time.monotonic() + timeout_s
    while not any(r.WhichOneof("record_type") == "exit" for r in records(found)):
        assert time.monotonic() < deadline, f"{found} holds no exit record after {timeout_s} s"
        time.sleep(0.1)
    return found


def history(path: Path) -> list[dict[str, Any]]:
    """Each `run.log` call's row, keys to values (a media value, such as a table, as its dict)."""
    rows = []
    for r in records(path):
        if r.WhichOneof("record_type") == "history":
            row: dict[str, Any] = {}
            for item in r.history.item:
                *outer, last = [item.key] if item.key else item.nested_key
                node = row
                for key in outer:
                    node = node.setdefault(key, {})
                node[last] = json.loads(item.value_json)
            rows.append(row)
    return rows


def config(path: Path) -> dict[str, Any]:
    """The run's config as logged: the run record's, then any later updates."""
    merged: dict[str, Any] = {}
    for r in records(path):
        kind = r.WhichOneof("record_type")
        if kind in ("run", "config"):
            updates = r.run.config.update if kind == "run" else r.config.update
            merged |= {item.key: json.loads(item.value_json) for item in updates}
    return merged
