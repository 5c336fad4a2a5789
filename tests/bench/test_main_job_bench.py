"""bench.main_job: a run's figures from its own files, and the tables and headline rows a result renders to."""

from __future__ import annotations

from typing import Any

from bench.common import summarize
from bench.main_job import aggregate, headline, run_figures, tables

CE = {"initial": 5.5, "after_warmup": 4.5, "final": 0.3, "fall_from_initial": 0.9, "fall_during_rl": 0.9}


def _records() -> list[dict[str, Any]]:
    """An initial evaluation at 20 s, 2 BC steps ending at 21 s, 2 RL steps of 1.0 and 1.5 s."""
    train = [
        {"kind": "train", "step": i + 1, "elapsed_s": 30.0 + i, "time/rollouts_s": r, "time/train_s": 0.4,
         "time/publish_s": 0.1}
        for i, r in enumerate((0.5, 1.0))
    ]  # fmt: skip
    return [
        {"kind": "eval_initial", "step": 0, "elapsed_s": 20.0},
        {"kind": "warmup", "step": 0, "elapsed_s": 20.4},
        {"kind": "warmup", "step": 1, "elapsed_s": 21.0},
        *train,
    ]


def test_the_fixed_costs_are_the_process_less_its_learning_steps() -> None:
    summary = {"heldout_env_ce": CE, "heldout_pass1": {"after_warmup": 0.0, "final": 0.2}}
    got = run_figures(_records(), summary | {"timings": {"eval_s": 3.0, "total_s": 40.0}}, process_s=50.0)
    # BC: 21.0 - 20.0 = 1.0 s over 2 steps; RL: (0.5+0.4+0.1) + (1.0+0.4+0.1) = 2.5 s, median 1.25
    assert (got["bc_s"], got["bc_step_s"], got["rl_s"], got["rl_step_s"]) == (1.0, 0.5, 2.5, 1.25)
    assert got["fixed_s"] == 50.0 - 1.0 - 2.5
    assert got["timings"] == {"eval_s": 3.0, "total_s": 40.0, "outside_run_s": 10.0}  # 50 s process, 40 s in run()
    assert run_figures(_records(), summary, process_s=50.0)["timings"] is None  # a commit before `timings`


def _run(process_s: float, fixed_s: float, rl_step_s: float, timings: dict[str, float] | None) -> dict[str, Any]:
    return {
        "process_s": process_s, "fixed_s": fixed_s, "bc_step_s": 0.4, "rl_step_s": rl_step_s, "bc_s": 40.0,
        "rl_s": 300.0, "timings": timings, "load_1m": {"mean": 1.5, "max": 2.0}, "rep": 0, "order": 0,
    }  # fmt: skip


def _record() -> dict[str, Any]:
    runs = {
        "base": [_run(400.0, 60.0, 1.0, None), _run(420.0, 80.0, 1.2, None) | {"rep": 1, "order": 1}],
        "head": [_run(370.0, 30.0, 1.0, {"eval_s": 8.0, "eval_n": 4}), _run(380.0, 40.0, 1.0, {"eval_s": 10.0})],
    }
    results = {"base": {"commit": "aaa1111", "runs": runs["base"]}, "head": {"commit": "bbb2222", "runs": runs["head"]}}
    results["figures"] = aggregate(runs)
    return {
        "benchmark": "main_job_costs",
        "date": "d",
        "commit": "bbb2222",
        "machine": {},
        "config": {},
        "results": results,
    }


def test_aggregate_summarizes_each_side_and_the_phases_one_side_recorded() -> None:
    figures = _record()["results"]["figures"]
    assert figures["fixed_s"]["base"] == summarize([60.0, 80.0]) and figures["fixed_s"]["head"]["median"] == 35.0
    assert figures["timings.eval_s"] == {"head": summarize([8.0, 10.0])}  # counts (`eval_n`) are no phase


def test_tables_and_headline_render_medians_ranges_and_change() -> None:
    record = _record()
    got = tables(record)
    assert set(got) == {"main_job_costs", "main_job_phases", "main_job_load"}
    assert got["main_job_costs"].splitlines()[0] == "| figure | base aaa1111 | head bbb2222 | change |"
    # fixed costs: base median 70 (60–80), head 35 (30–40): -50%
    assert (
        "| fixed costs outside learning, s | 70.00 (60.00–80.00) | 35.00 (30.00–40.00) | -50% |"
        in got["main_job_costs"]
    )
    assert "| eval_s | not recorded | 9.00 (8.00–10.00) |  |" in got["main_job_phases"]
    assert got["main_job_load"].splitlines()[2] == "| 0 | base | 0 | 1.50 | 2.00 | 400.0 |"
    assert headline(record) == [
        ("main job: fixed costs outside learning (Ray, oracle, evaluations, start, shutdown)", "70.0 → 35.0 s (-50%)"),
        ("main job: seconds per RL step (median)", "1.10 → 1.00 s (-9%)"),  # base 1.0 and 1.2: median 1.1
        ("main job: seconds per BC warm-up step", "0.40 → 0.40 s (+0%)"),
    ]
