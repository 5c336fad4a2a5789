"""The ledger on each kind of storage it accepts — a directory, a file:// URI, and S3 (moto's
S3 server on loopback, reached by pyarrow's own S3 client) — with nothing lost or doubled on
reopening, no half group after a crash mid-write, runs written in the old layout still read,
and bad locations refused at config load."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hillclimb.config import load_config
from hillclimb.errors import ConfigError
from orchestrator.buffer import BufferConfig, TrajectoryBuffer
from orchestrator.ledger import Ledger
from tests.factories import group

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"{host}:{port}"
    server.stop()


@pytest.fixture(params=["directory", "file_uri", "s3"])
def location(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "directory":
        return str(tmp_path / "run dir" / "ledger")  # a space: plain paths are not parsed as URIs
    if request.param == "file_uri":
        return (tmp_path / "run dir" / "ledger").as_uri()
    import pyarrow.fs as pafs

    endpoint = request.getfixturevalue("s3_endpoint")
    for name, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",  # nothing but the endpoint is asked anything
    }.items():
        monkeypatch.setenv(name, value)
    bucket = f"ledgers-{uuid.uuid4().hex[:12]}"
    pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", allow_bucket_creation=True).create_dir(bucket)
    return f"s3://{bucket}/runs/r1/ledger?endpoint_override={endpoint}&scheme=http"


def test_round_trip_and_reopen_lose_and_double_nothing(location: str) -> None:
    originals = [group("train-r0-cat/app log", version=3, rewards=[1.0, 0.0]), group("b"), group("c")]
    ledger = Ledger(location)
    for g in originals:
        ledger.append(g)
    ledger.append(originals[1])  # recorded twice: still one group
    ledger.record([g.group_id for g in originals], "queued")
    ledger.record(["train-r0-cat/app log"], "consumed", step=1)
    ledger.record(["c"], "dropped", reason="stale", version=4)

    reopened = Ledger(location)  # what a resumed run sees
    assert reopened.group_ids() == {g.group_id for g in originals}
    assert [reopened.read_group(g.group_id) for g in originals] == originals  # ids, roles, log-probs, metadata
    assert len(reopened.trajectories()) == sum(len(g.trajectories) for g in originals)
    assert sorted((e["group"], e["event"]) for e in reopened.events()) == [
        ("b", "queued"),
        ("c", "dropped"),
        ("c", "queued"),
        ("train-r0-cat/app log", "consumed"),
        ("train-r0-cat/app log", "queued"),
    ]
    assert reopened.settled() == {"train-r0-cat/app log", "c"}
    assert reopened.pending() == [originals[1]]
    # b used by step 2, which a crash lost: a run resumed from step 1 serves it again and uses it
    # at step 3; after another crash, a run resumed from step 2 serves it again too.
    reopened.record(["b"], "consumed", step=2)
    assert Ledger(location).pending(as_of_step=1) == [originals[1]]
    reopened.record(["b"], "consumed", step=3)
    assert Ledger(location).pending(as_of_step=2) == [originals[1]]
    assert Ledger(location).pending(as_of_step=3) == []


async def test_the_buffer_resumes_from_any_storage(location: str) -> None:
    first = TrajectoryBuffer(location, BufferConfig(max_staleness=10))
    for name in ("a", "b", "c"):
        await first.put(group(name))
    await first.get(1, step=1)  # a: used by step 1, which the checkpoint kept
    await first.get(1, step=2)  # b: used by step 2, which the crash lost
    resumed = TrajectoryBuffer(location, BufferConfig(max_staleness=10), resume_step=1)
    assert [g.group_id for g in await resumed.get(2, step=2, timeout_s=1)] == ["b", "c"]


# A child process that dies halfway through a group's bytes, where the ledger writes them: into
# the temporary file on a local disk, into the upload (which then never completes) on S3.
CRASH_MID_WRITE = """
import os, sys
from orchestrator import ledger as module
from tests.factories import group

ledger = module.Ledger(sys.argv[1])

def half_then_die(path, data):
    if ledger.local:
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
    else:
        upload = ledger.fs.open_output_stream(path)  # held: a stream dropped is closed, completing it
        upload.write(data[: len(data) // 2])
    os._exit(3)

module._write_synced = half_then_die
ledger._upload = half_then_die
ledger.append(group("b", rewards=[0.5] * 64))
"""


def test_a_crash_mid_write_leaves_no_half_group(location: str) -> None:
    ledger = Ledger(location)
    ledger.append(group("a"))
    crashed = subprocess.run([sys.executable, "-c", CRASH_MID_WRITE, location], cwd=REPO, capture_output=True)
    assert crashed.returncode == 3, crashed.stderr.decode()[-2000:]
    if ledger.local:  # the half file is there, under its temporary name
        assert sorted(p.name for p in Path(ledger.groups_dir).iterdir()) == ["a.parquet", "b.parquet.tmp"]
    reopened = Ledger(location)
    assert reopened.group_ids() == {"a"}
    reopened.append(group("b"))  # and the group is written whole when it runs again
    assert Ledger(location).read_group("b") == group("b")


def test_a_run_in_the_old_layout_still_reads(tmp_path: Path) -> None:
    """Runs before shared storage appended every event to `events.jsonl`; their group files are
    unchanged. A resumed run reads both and writes its new events in the new layout."""
    root = tmp_path / "ledger"
    old = Ledger(root)
    for name in ("a", "b", "c", "d"):
        old.append(group(name))
    (root / "groups" / "e.tmp").write_bytes(b"PAR1 half a file")  # the old layout's crash leftover
    lines = [
        *(f'{{"group": "{name}", "event": "queued"}}' for name in "abcd"),
        '{"group": "a", "event": "consumed", "step": 1}',
        '{"group": "b", "event": "consumed", "step": 2}',
        '{"group": "c", "event": "dropped", "reason": "stale", "version": 3}',
        '{"group": "d", "event": "dropp',  # a crash mid-append
    ]
    (root / "events.jsonl").write_text("\n".join(lines))
    ledger = Ledger(root)
    assert ledger.group_ids() == {"a", "b", "c", "d"}
    assert ledger.settled(as_of_step=1) == {"a", "c"}
    assert [g.group_id for g in ledger.pending(as_of_step=1)] == ["b", "d"]
    ledger.record(["b", "d"], "consumed", step=3)  # after a resume from step 1: b's step 2 was lost
    assert Ledger(root).settled(as_of_step=2) == {"a", "c"}
    assert Ledger(root).settled() == {"a", "b", "c", "d"}
    assert (root / "events.jsonl").read_text() == "\n".join(lines)  # never written again


def test_an_unknown_event_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown ledger event 'used'"):
        Ledger(tmp_path).record(["a"], "used", step=1)


@pytest.mark.parametrize(
    "uri",
    [
        "/srv/ledgers/run-1",
        "file:///srv/ledgers/run-1",
        "s3://ledgers/run-1?endpoint_override=minio.storage:9000&scheme=http",
        "gs://ledgers/run-1",
    ],
)
def test_ledger_uris_accepted_at_config_load(uri: str) -> None:
    assert load_config(None, [f"run.ledger_uri={uri}"]).run.ledger_uri == uri


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        ("ftp://host/ledger", "unknown scheme 'ftp'"),
        ("hdfs://namenode/ledger", "unknown scheme 'hdfs'"),  # files are visible while written
        ("runs/ledger", "is a relative path"),
        ("file://host/ledger", "a file URI names an absolute path on this host"),
        ("s3:///run-1", "names no bucket"),
        ("s3://AKIA:hunter2@ledgers/run-1", "credentials in the URI"),
        ("gs://ledgers/run-1?access_token=abc", "credentials in the URI"),
    ],
)
def test_bad_ledger_uris_refused_at_config_load(uri: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=r"run\.ledger_uri[:=].*" + problem) as caught:
        load_config(None, [f"run.ledger_uri={uri}"])
    assert "hunter2" not in str(caught.value) and "access_token=abc" not in str(caught.value)  # errors get logged


def test_the_ledger_refuses_what_pyarrow_cannot_open_or_cannot_write_whole() -> None:
    with pytest.raises(ConfigError, match="Unexpected query parameter in S3 URI: 'bogus'"):
        Ledger("s3://ledgers/run-1?bogus=1")
    with pytest.raises(ConfigError, match="cannot live on _MockFileSystem"):
        Ledger("mock:///ledger")
