"""The ledger (durable, torn-write safe) and the buffer (bounded, staleness, exactly once, resume)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from orchestrator.buffer import BufferConfig, TrajectoryBuffer
from orchestrator.ledger import Ledger
from tests.factories import group


def test_ledger_round_trips_groups_exactly(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    original = group("train-r0-cat/app log", version=3, rewards=[1.0, 0.0])
    ledger.append(original)
    assert ledger.group_ids() == {"train-r0-cat/app log"}
    assert ledger.read_group("train-r0-cat/app log") == original  # ids, roles, float64 log-probs, metadata


def test_ledger_ignores_torn_writes(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path)
    ledger.append(group("a"))
    (tmp_path / "groups" / "b.parquet.tmp").write_bytes(b"PAR1 half a file")  # a crash mid-write leaves only a .tmp
    ledger.record(["a"], "consumed", step=1)
    with open(ledger.legacy_events_path, "a") as f:  # a run of the old layout
        f.write('{"group": "a", "event": "dropp')  # a crash mid-append
    assert ledger.group_ids() == {"a"}
    assert ledger.settled() == {"a"} and ledger.pending() == []  # and "a" was never queued either


async def test_staleness_admission_and_exactly_once(tmp_path: Path) -> None:
    buffer = TrajectoryBuffer(str(tmp_path), BufferConfig(max_staleness=1), version=5)
    assert await buffer.put(group("old", version=3)) == "stale"  # 5 - 3 > 1
    assert await buffer.put(group("ok", version=4)) == "admitted"
    assert await buffer.put(group("new", version=5)) == "admitted"
    batch = await buffer.get(2, step=1, timeout_s=1)
    assert [g.group_id for g in batch] == ["ok", "new"]
    with pytest.raises(TimeoutError):
        await buffer.get(1, step=2, timeout_s=0.1)  # nothing is handed out twice
    ledger = Ledger(tmp_path)
    assert ledger.group_ids() == {"old", "ok", "new"}  # every completed group is on disk, stale or not
    assert ledger.settled() == {"old", "ok", "new"}
    assert buffer.stats()["dropped_stale"] == 1 and buffer.stats()["staleness"] == {1: 1, 0: 1}


async def test_a_group_put_twice_is_queued_once(tmp_path: Path) -> None:
    """A worker that died after its put but before answering: the driver runs the group again."""
    buffer = TrajectoryBuffer(str(tmp_path), BufferConfig(max_staleness=1))
    assert await buffer.put(group("a")) == "admitted"
    assert await buffer.put(group("a")) == "duplicate"
    assert [g.group_id for g in await buffer.get(1, step=1, timeout_s=1)] == ["a"]
    assert buffer.stats()["depth"] == 0 and buffer.stats()["admitted"] == 1


async def test_groups_that_go_stale_while_queued_are_dropped(tmp_path: Path) -> None:
    buffer = TrajectoryBuffer(str(tmp_path), BufferConfig(max_staleness=0), version=0)
    await buffer.put(group("v0", version=0))
    buffer.set_version(1)  # synchronous mode: a group from version 0 cannot train version 1
    assert buffer.stats()["depth"] == 0 and buffer.stats()["dropped_stale"] == 1
    await buffer.put(group("v1", version=1))
    assert [g.group_id for g in await buffer.get(1, step=1, timeout_s=1)] == ["v1"]


async def test_put_waits_when_full(tmp_path: Path) -> None:
    buffer = TrajectoryBuffer(str(tmp_path), BufferConfig(capacity_groups=2, max_staleness=10))
    await buffer.put(group("a"))
    await buffer.put(group("b"))
    third = asyncio.ensure_future(buffer.put(group("c")))
    await asyncio.sleep(0.05)
    assert not third.done()  # back-pressure: the producer waits
    await buffer.get(1, step=1)
    assert await asyncio.wait_for(third, 30) == "admitted"  # a hang guard: it covers a Parquet write


async def test_resume_serves_exactly_what_no_kept_step_used(tmp_path: Path) -> None:
    first = TrajectoryBuffer(str(tmp_path), BufferConfig(max_staleness=10))
    for name in ("a", "b", "c", "d"):
        await first.put(group(name))
    await first.get(1, step=1)  # a: used by step 1, which the checkpoint kept
    await first.get(1, step=2)  # b: used by step 2, which the crash lost
    Ledger(tmp_path).append(group("oracle-x"))  # recorded for another use: never a training group
    # The run restarts from its step-1 checkpoint.
    resumed = TrajectoryBuffer(str(tmp_path), BufferConfig(max_staleness=10), resume_step=1)
    served = [g.group_id for g in await resumed.get(3, step=2, timeout_s=1)]
    assert served == ["b", "c", "d"]
    assert resumed.stats()["restored"] == 3
