"""`bench.batching`'s renderers on a synthetic record: the figures they print are the record's."""

from __future__ import annotations

from typing import Any

from bench.batching import headline, tables


def _mode(p50: float, p95: float, mean: float, rate: float) -> dict[str, Any]:
    return {
        "latency_s": {"mean": mean},
        "latency_p50_s": p50,
        "latency_p95_s": p95,
        "tokens_per_s": {"median": rate, "min": rate - 2, "max": rate + 3},
        "runs": [],
    }


RECORD = {
    "config": {"requests": 16, "gap_ms": 50.0, "lengths": "8,16,32,64", "model": "m", "reps": 2},
    "results": {"static": _mode(3.25, 7.5, 3.9, 41.04), "continuous": _mode(1.5, 4.125, 2.0, 55.56)},
}


def test_the_latency_table_has_a_row_per_mode_with_the_records_figures() -> None:
    (table,) = tables(RECORD).values()
    lines = table.splitlines()
    assert lines[0] == "| batching | p50 latency | p95 latency | mean latency | tokens/s (runs) |"
    assert lines[2:4] == [
        "| static | 3.25 s | 7.50 s | 3.90 s | 41.0 (39.0–44.0) |",
        "| continuous | 1.50 s | 4.12 s | 2.00 s | 55.6 (53.6–58.6) |",
    ]
    assert lines[-1] == "16 requests, one every 50 ms, max_new_tokens 8,16,32,64, m, 2 reps a mode."


def test_the_headline_puts_continuous_first_against_static() -> None:
    rows = headline(RECORD)
    assert [figure for _, figure in rows] == ["1.50 / 4.12 s vs 3.25 / 7.50 s", "55.6 vs 41.0"]
    assert all("continuous vs static" in what for what, _ in rows)
