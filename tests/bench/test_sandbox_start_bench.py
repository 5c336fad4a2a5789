"""The sandbox start-up benchmark: kinds alternate inside each repetition in a rotating order,
ratios are taken within a repetition, its tables and headline read from a record, and a small
run through the local path (and, with an engine, the Docker ones)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from bench.sandbox_start import DOCKER, FLOOR, LOCAL, OPENENV, cold_starts, headline, interleaved, run_all, tables


async def test_each_repetition_runs_every_kind_once_in_a_rotated_order() -> None:
    calls: list[str] = []

    def start(kind: str, took: float):  # noqa: ANN202 (a coroutine factory)
        async def one() -> float:
            calls.append(kind)
            return took

        return one

    samples, host = await interleaved({"a": start("a", 1.0), "b": start("b", 2.0), "c": start("c", 3.0)}, reps=4)
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c"]
    assert samples == {"a": [1.0] * 4, "b": [2.0] * 4, "c": [3.0] * 4}
    assert len(host["loads_1m"]) == 4 and all(b is None or 0 <= b <= 1 for b in host["host_cpu_busy"])


def _kind(samples: list[float]) -> dict[str, Any]:
    ordered = sorted(samples)
    median = ordered[len(ordered) // 2]
    return {"samples_s": samples, "p50_s": median, "p99_s": ordered[-1], "median": median, "n": len(samples)}


RECORD = {
    "benchmark": "sandbox_start",
    "date": "2026-12-07 07:00:00 UTC",
    "commit": "abc1234",
    "machine": {"cpus": 2},
    "config": {"reps": 3, "leases": 3, "docker": True, "openenv": True},
    "results": {
        "local_first_s": 0.4321,
        "cold": {
            LOCAL: _kind([0.030, 0.034, 0.040]),
            DOCKER: _kind([0.46, 0.47, 0.50]),
            FLOOR: _kind([0.44, 0.45, 0.50]),
            OPENENV: _kind([1.20, 1.21, 1.25]),
        },
        # 0.46/0.44, 0.47/0.45, 0.50/0.50
        "ratios": {"docker cold / floor": [1.045, 1.044, 1.0], "openenv / docker cold": [2.61, 2.57, 2.5]},
        "loads_1m": [0.2, 0.4, 0.3],
        "host_cpu_busy": [0.5, 0.6, None, 0.7],  # None: a repetition shorter than a clock tick
        "warm": {"local warm lease (shared)": _kind([0.0003, 0.0004, 0.0005] * 40)},
        "warm_loads_1m": [0.3],
    },
}


def test_cold_table_reads_medians_with_ranges_and_ratios_within_repetitions() -> None:
    blocks = tables(RECORD)
    cold = blocks["sandbox_start"]
    assert "| local cold | 34.0 (30.0–40.0) | — | 3 |" in cold  # 3 samples: no p99
    assert "| bare docker run (floor) | 450.0 (440.0–500.0) | — | 3 |" in cold
    assert "| ratio: docker cold / floor | 1.04 (1.00–1.04) | — | 3 |" in cold
    assert "3 repetitions, the kinds alternating inside each" in cold and "took 432 ms" in cold
    assert "the host's CPUs were 60 (50–70)% busy per repetition" in cold
    assert "Host load (1-minute average) 0.30 (0.20–0.40)" in cold
    # 120 samples: the p99 is shown
    assert "| local warm lease (shared) | 0.40 (0.30–0.50) | 0.50 | 120 |" in blocks["sandbox_warm"]


def test_headline_rows() -> None:
    assert headline(RECORD) == [
        ("Sandbox cold start, local (median)", "34.0 ms"),
        ("Sandbox cold start, Docker (median)", "470 ms"),
        ("Docker cold start over a bare `docker run` (same repetition)", "1.04 (1.00–1.04)×"),
        ("OpenEnv `LocalDockerProvider` cold start over ours (Docker)", "2.57 (2.50–2.61)×"),
        ("Warm lease of a shared local sandbox (median)", "0.40 ms"),
    ]


def _args(**overrides: Any) -> argparse.Namespace:
    return argparse.Namespace(**{"reps": 2, "leases": 2, "docker": False, "openenv": False, **overrides})


@pytest.mark.root
@pytest.mark.slow
async def test_a_small_local_run() -> None:
    results = await run_all(_args())
    assert list(results["cold"]) == [LOCAL] and results["cold"][LOCAL]["n"] == 2
    assert results["ratios"] == {} and len(results["loads_1m"]) == len(results["host_cpu_busy"]) == 2
    assert all(0 < s < 60 for s in results["cold"][LOCAL]["samples_s"])
    assert {k: v["n"] for k, v in results["warm"].items()} == {
        "local warm lease (shared)": 8,
        "local warm lease (single-use)": 2,
    }


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.usefixtures("docker_engine")
async def test_a_small_run_alternates_docker_with_its_floor_and_openenv() -> None:
    results = await run_all(_args(docker=True, openenv=True))
    assert list(results["cold"]) == [LOCAL, DOCKER, FLOOR, OPENENV]
    assert all(len(r) == 2 and all(x > 0 for x in r) for r in results["ratios"].values())
    assert set(results["ratios"]) == {"docker cold / floor", "openenv / floor", "openenv / docker cold"}
    assert results["warm"]["docker warm lease (single-use)"]["n"] == 2


@pytest.mark.root
@pytest.mark.slow
async def test_cold_starts_in_a_row_as_the_regression_benchmark_runs_them(tmp_path: Path) -> None:
    from providers.contract import SandboxSpec
    from providers.local import LocalProvider

    provider = LocalProvider(root=tmp_path)
    try:
        samples = await cold_starts(provider, SandboxSpec(env="toy_terminal", run_id="bench"), 2)
        assert len(samples) == 2 and all(0 < s < 60 for s in samples)  # the first starts the fork server too
        assert await provider.list() == []  # each destroyed before the next
    finally:
        await provider.close()
