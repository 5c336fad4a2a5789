"""The live-sessions benchmark: its tables and headline from a record, which processes it
counts as its own, and a small run through every path it measures (sessions dealt to several
client processes, rounds stepped together, memory and CPU read from the run's own pids)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bench.concurrency import Fleet, headline, measure, tables
from bench.run_processes import cpu_s, descendants, pss_kib, uss_kib
from bench.session_clients import DESCRIPTOR_RESERVE, ClientProcs, short_of_descriptors


def _row(sessions: int, step_failures: int = 0) -> dict[str, Any]:
    return {
        "sessions": sessions,
        "sandboxes": sessions // 64,
        "client_procs": 2,
        "live": sessions,
        "open_failures": 0,
        "step_failures": step_failures,
        "errors": {},
        "open_s": 0.5,
        "round_s": [0.010, 0.009, 0.012],
        "steps_per_s": [sessions / 0.010, sessions / 0.009, sessions / 0.012],
        "step_latency_ms": {"p50": 5.0, "p99": 9.0},
        "cpu_s_per_round": {"sandboxes": 0.01, "clients": 0.005},
        "host_cpu_busy": 0.9,
        "sandbox_processes": 4,
        "sandbox_kib_per_session": 204.8,
        "client_kib_per_session": 8.192,
        "load_1m_before": 0.5 if sessions == 64 else 1.5,
    }


RECORD = {
    "benchmark": "concurrency",
    "date": "2026-12-07 07:00:00 UTC",
    "commit": "abc1234",
    "machine": {"cpus": 2},
    "config": {"levels": [64, 128], "per_sandbox": 64, "client_procs": 2, "rounds": 3},
    "results": {"local": [_row(64), _row(128, step_failures=1)]},
}


def test_table_reads_each_level_as_median_and_range_with_its_provenance() -> None:
    table = tables(RECORD)["concurrency"]
    # rounds 10, 9, 12 ms → median 10 (9–12); 64 sessions / those rounds → 6400 (5333–7111) steps/s;
    # 0.01 and 0.005 CPU-s a round over 64 steps → 156 and 78 µs a step; 3 × 0.015 CPU-s in
    # 31 ms of rounds on 2 CPUs → 73% of them;
    # 204.8 KiB = 0.20 MiB; 8.192 KiB = 0.008 MiB
    assert (
        "| local | 64 | 64 | 0 | 1 × 64 | 10 (9–12) | 6400 (5333–7111) | 5 / 9 | 156 / 78 | 73% / 90% | 0.20 | 0.008 |"
        in table
    )
    assert "| local | 128 | 128 | 1 | 2 × 64 |" in table
    # loads 0.5 and 1.5 → median 1.00
    assert "Host load (1-minute average) 1.00 (0.50–1.50) over the run." in table
    assert "3 rounds per level" in table and "clients in 2 processes" in table


def test_rounds_too_short_for_a_clock_tick_read_no_host_share() -> None:
    record = {**RECORD, "results": {"local": [{**_row(64), "host_cpu_busy": None}]}}
    assert "| 73% / — |" in tables(record)["concurrency"]


def test_headline_is_the_largest_level_held_without_a_failure() -> None:
    assert headline(RECORD) == [
        ("Live sessions on one 2-CPU node, zero failures (local)", "64"),
        ("Memory per live session at 64 (local)", "0.20 MiB (+0.008 client)"),
        ("All 64 sessions stepping at once (local)", "6,400 steps/s"),
    ]


def test_a_level_short_of_live_sessions_is_not_a_headline() -> None:
    short = {**_row(64), "live": 63}
    assert headline({**RECORD, "results": {"local": [short]}}) == []


def test_a_share_past_the_open_file_limit_names_the_client_processes_that_fit() -> None:
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no hard open-file limit here to run past")
    room = hard - DESCRIPTOR_RESERVE
    assert short_of_descriptors(room * 2, 2) is None  # exactly the room in each
    why = short_of_descriptors(room * 2 + 1, 2)
    assert why is not None and "use at least 3 client processes" in why


async def test_a_client_process_that_fails_stops_the_run_with_its_error() -> None:
    clients = ClientProcs(2)
    try:
        assert [r["live"] for r in await clients.step()] == [0, 0]  # no sessions yet: nothing to step
        with pytest.raises(RuntimeError, match=r"2 client process\(es\) failed: bogus: ValueError: no command 'bogus'"):
            await clients._all([("bogus",), ("bogus",)])
    finally:
        await clients.close()


def test_descendants_are_a_process_tree_less_the_excluded_subtrees() -> None:
    tree = subprocess.Popen(["sh", "-c", "sleep 30 & sleep 30 & wait"])
    try:
        deadline = time.monotonic() + 10
        while len(descendants([tree.pid])) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        below = descendants([tree.pid])
        assert len(below) == 3 and tree.pid in below  # the shell and its two sleeps
        assert below <= descendants([os.getpid()])
        assert descendants([os.getpid()], exclude=[tree.pid]).isdisjoint(below)
    finally:
        tree.kill()
        tree.wait()


def test_cpu_of_a_reaped_child_counts_for_its_parent() -> None:
    # a command that lives for one step: gone before it could be listed, its CPU still counts
    burn = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass"
    shell = subprocess.Popen(["sh", "-c", '"$0" -c "$1"; sleep 30', sys.executable, burn])
    try:
        deadline = time.monotonic() + 20
        while cpu_s([shell.pid]) < 0.3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert 0.3 <= cpu_s([shell.pid]) < 1.0
    finally:
        shell.kill()
        shell.wait()


def test_a_process_named_twice_is_counted_once() -> None:
    idle = subprocess.Popen(["sleep", "30"])  # its memory holds still between the readings
    try:
        time.sleep(0.1)
        assert 0 < uss_kib([idle.pid]) <= pss_kib([idle.pid, idle.pid]) == pss_kib([idle.pid])
        assert pss_kib([idle.pid, os.getpid()]) > pss_kib([idle.pid])
    finally:
        idle.kill()
        idle.wait()


@pytest.mark.root
@pytest.mark.slow
async def test_a_small_run_holds_every_session_from_two_client_processes(tmp_path: Path) -> None:
    from providers.local import LocalProvider

    provider = LocalProvider(root=tmp_path)
    try:
        rows = await measure("local", provider, levels=[4, 8], per_sandbox=4, rounds=2, procs=2)
    finally:
        await provider.close()
    assert [(r["sessions"], r["live"], r["sandboxes"]) for r in rows] == [(4, 4, 1), (8, 8, 2)]
    assert all(r["open_failures"] == r["step_failures"] == 0 and r["errors"] == {} for r in rows), rows
    top = rows[-1]
    assert len(top["round_s"]) == 2 and all(w > 0 for w in top["round_s"])
    # the fork server, then per sandbox its supervisor, the warden and the server
    assert top["sandbox_processes"] >= 1 + 2 * 3
    assert top["sandbox_kib_per_session"] > 0
    assert top["cpu_s_per_round"]["sandboxes"] >= 0 and top["cpu_s_per_round"]["clients"] >= 0
    assert top["step_latency_ms"]["p99"] >= top["step_latency_ms"]["p50"] > 0
    assert 0 <= top["start_skew_ms"] < 1000 * max(top["round_s"])


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.usefixtures("docker_engine")
async def test_docker_sandboxes_are_counted_with_their_shims(tmp_path: Path) -> None:
    from providers.docker import DockerProvider

    provider = DockerProvider(root=tmp_path)
    fleet = Fleet("docker", provider, per_sandbox=4)
    try:
        await fleet.hold(8)
        pids = fleet.pids()
        names = {Path(f"/proc/{pid}/comm").read_text().strip() for pid in pids}
        assert any(name.startswith("containerd-shim") for name in names), names
        assert len(pids) >= 2 * 2  # per container at least its shim and its init
    finally:
        await fleet.close()
        await provider.close()
