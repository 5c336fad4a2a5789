"""The env-step benchmark: its rendering from a result record, figures worked out by hand, and a
short run end to end (every contender steps, on one loop, and the record it makes renders)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import env_step
from bench.env_step import CPU, FLOOR_TCP, FLOOR_UDS, OURS_SYNC_TCP, SYNC_REFERENCE

ROOT = Path(__file__).resolve().parents[2]

# steps/s per repetition (rep 0, rep 1), 1 session then 16; every other row steps at 1,000 / 2,000
RATES = {
    SYNC_REFERENCE: ((3000, 4000), (9000, 10000)),
    OURS_SYNC_TCP: ((9000, 10000), (45000, 50000)),
    FLOOR_TCP: ((12000, 12000), (60000, 80000)),
    FLOOR_UDS: ((12000, 15000), (60000, 80000)),
}


def _record() -> dict[str, Any]:
    repetitions = []
    for rep in range(2):
        rates = {
            c.name: {
                f"{n}_sessions": RATES.get(c.name, ((1000, 2000), (1000, 2000)))[i][rep]
                for i, n in enumerate(env_step.SESSIONS)
            }
            for c in env_step.CONTENDERS
        }
        # CPU µs per step: the server 40 + 10 * rep, the client 30 + 10 * rep, every row
        cpu = {
            name: {key: {"server": 40.0 + 10 * rep, "client": 30.0 + 10 * rep} for key in by_sessions}
            for name, by_sessions in rates.items()
        }
        load = (0.5 + rep, 0.4, 0.3)
        repetitions.append(
            {"rep": rep, "loop": "uvloop", "reversed": bool(rep), "load_before": load, "rates": rates, CPU: cpu}
        )
    return {
        "benchmark": "env_step",
        "date": "2026-12-07 07:00:00 UTC",
        "commit": "abc1234",
        "machine": {},
        "config": env_step.config(2.0, 2, ("uvloop",)),
        "results": env_step.summarize_repetitions(repetitions, ("uvloop",)),
    }


def _row(table: str, *first: str) -> list[str]:
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[: len(first) + 1] == ["uvloop", *first]:
            return cells
    raise AssertionError(f"no row starting {first}")


def test_tables_give_medians_ranges_and_paired_ratios() -> None:
    table = env_step.tables(_record())["steps"]
    # median of 9,000 and 10,000; against OpenEnv 9,500/3,500 = 2.71, per repetition 9,000/3,000 = 3.00 and
    # 10,000/4,000 = 2.50; the TCP floor's rate over ours 12,000/9,500 = 1.26, per repetition 12,000/9,000 = 1.33
    # and 12,000/10,000 = 1.20
    assert _row(table, OURS_SYNC_TCP, "1")[3:] == ["9,500 (9,000–10,000)", "2.71× (2.50–3.00)", "1.26× (1.20–1.33)"]
    # 47,500/9,500 = 5.00 (45,000/9,000 and 50,000/10,000 too); 70,000/47,500 = 1.47, per repetition
    # 60,000/45,000 = 1.33 and 80,000/50,000 = 1.60
    assert _row(table, OURS_SYNC_TCP, "16")[3:] == ["47,500 (45,000–50,000)", "5.00× (5.00–5.00)", "1.47× (1.33–1.60)"]
    assert _row(table, SYNC_REFERENCE, "1")[3:5] == ["3,500 (3,000–4,000)", "—"]  # the reference has no ratio to itself
    assert _row(table, FLOOR_UDS, "1")[4:] == ["—", "—"]
    assert "Host load (1-minute average) 1.00 (0.50–1.50) over the run." in table  # median of 0.5 and 1.5


def test_cpu_table_gives_the_round_trip_and_each_side() -> None:
    table = env_step.tables(_record())["cpu"]
    # 1e6 / 9,500 steps/s = 105 µs; CPU medians of 40 and 50, 30 and 40
    assert _row(table, OURS_SYNC_TCP, "1")[3:] == ["105", "45", "35"]


def test_targets_say_met_or_not_and_explain_the_one_session_gap() -> None:
    table = env_step.tables(_record())["targets"]
    # 3 x 3,500 = 10,500 needed, 9,500 measured; 3 x 9,500 = 28,500 needed at 16, 47,500 measured
    assert _row(table, "sync step ≥ 3× OpenEnv, TCP, 1 session")[2:] == [
        "≥ 10,500 steps/s",
        "9,500 (2.71×)",
        "no",
    ]
    assert _row(table, "sync step ≥ 3× OpenEnv, TCP, 16 sessions")[4] == "yes"
    # the TCP floor 12,000 / 1.5 = 8,000 needed; 12,000 / 9,500 = 1.26 of its round trips
    assert _row(table, "sync step ≤ 1.5× the floor's round trip, TCP, 1 session")[2:] == [
        "≥ 8,000 steps/s",
        "9,500 (1.26×)",
        "yes",
    ]
    # 1e6 / 10,500 = 95 µs needed; 1e6 / 9,500 = 105; 1e6 / 12,000 = 83; 1e6 / 3,500 = 286
    assert "needs a round trip of 95 µs; ours takes 105 µs (TCP)" in table
    assert "ping-pong 83 µs (TCP)" in table and "OpenEnv 286 µs" in table


def test_headline_is_same_loop_and_against_the_floor() -> None:
    assert env_step.headline(_record()) == [
        (
            "synchronous env step, uvloop both sides, TCP, 1 / 16 sessions: hillclimb against OpenEnv",
            # medians 9,500 / 3,500 = 2.71 and 47,500 / 9,500 = 5.00
            "9,500 against 3,500 (2.71×) / 47,500 against 9,500 (5.00×)",
        ),
        (
            "synchronous env step, uvloop, 1 session, Unix socket / TCP: hillclimb against the bare ping-pong floor",
            # Unix: 13,500 / 1,500 = 9.00 (OURS_SYNC_UDS steps at the default 1,000 / 2,000); TCP: 12,000 / 9,500 = 1.26
            "1,500 against 13,500 (9.00×) / 9,500 against 12,000 (1.26×)",
        ),
    ]


@pytest.mark.slow
def test_short_run_measures_every_contender(tmp_path: Path) -> None:
    out = tmp_path / "env_step.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.env_step", "--seconds", "0.05", "--reps", "1", "--loops", "asyncio"]
        + ["--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads(out.read_text())
    (repetition,) = record["results"]["repetitions"]
    assert repetition["loop"] == "asyncio" and len(repetition["load_before"]) == 3
    assert {name for name, by_sessions in repetition["rates"].items() if min(by_sessions.values()) > 0} == {
        c.name for c in env_step.CONTENDERS
    }
    assert all(min(side.values()) > 0 for by in repetition[CPU].values() for side in by.values())
    assert set(env_step.tables(record)) == {"steps", "cpu", "targets"} and len(env_step.headline(record)) == 2
