"""The λ sweep (`hillclimb train --ablation`): its runs' configs, equal RL steps, which earlier
runs it reads back, the figures per λ, and a whole tiny sweep run, rerun and resumed."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hillclimb.config import load_config
from hillclimb.config.losses import ConstantLambda
from hillclimb.errors import ConfigError
from orchestrator.ablation import (
    arm_config,
    default_lambdas,
    earlier_run,
    parse_lambdas,
    per_lambda,
    plan,
    sign_test_p,
    sweep_base,
)
from orchestrator.run_lifecycle import prepare_run_dir
from orchestrator.sweep_plot import x_positions

REPO = Path(__file__).parents[2]
ECHO_TOY = REPO / "configs" / "echo_toy.yaml"


def test_each_run_has_its_lambda_and_seed_whatever_lambda_was_set() -> None:
    for overrides in ([], ["learner.echo_lambda=0.5"]):
        config = load_config(ECHO_TOY, overrides)
        arms = plan(config, [0.0, 0.05], [7, 8])
        assert [(a.lam, a.seed) for a in arms] == [(0.0, 7), (0.05, 7), (0.0, 8), (0.05, 8)]  # seed by seed
        on = arms[1].config
        assert on.learner.loss.echo.schedule == ConstantLambda(value=0.05)
        assert arms[0].config.learner.loss.echo.schedule == ConstantLambda(value=0.0)
        assert [a.config.run.name for a in arms[:2]] == ["echo-toy-lambda0-s7", "echo-toy-lambda0.05-s7"]
        assert on.run.seed == on.learner.seed == on.policy.model.seed == 7
        assert not on.run.resume and on.train.time_budget_s is None  # a fresh start, to the last RL step


def test_the_default_is_echo_on_versus_off() -> None:
    assert default_lambdas(load_config(ECHO_TOY)) == [1.0, 0.0]
    assert default_lambdas(load_config(ECHO_TOY, ["learner.echo_lambda=0"])) == [0.0]
    decaying = load_config(ECHO_TOY, ["learner.loss.echo.schedule={type: linear_decay, start: 1, steps: 10}"])
    with pytest.raises(ConfigError, match=r"'linear_decay'.*--lambdas"):
        default_lambdas(decaying)


def test_lambdas_are_parsed_or_refused_naming_the_bad_ones() -> None:
    assert parse_lambdas("0,0.005,0.05,0.2,1") == [0.0, 0.005, 0.05, 0.2, 1.0]
    for text, match in [
        ("0,a", "numbers separated by commas"),
        ("0,,1", "numbers separated by commas"),
        ("0,-1,nan", r"\['-1', 'nan'\] are not"),
        ("0.05,5e-2,1", r"\['0.05'\] given more than once"),
    ]:
        with pytest.raises(ConfigError, match=match):
            parse_lambdas(text)


def test_the_sweep_drops_the_time_budget_and_says_so() -> None:
    """The main job's 600 s guard would end runs at different steps on a busy host."""
    said: list[str] = []
    base = sweep_base(load_config(ECHO_TOY), said.append)
    assert base.train.time_budget_s is None and base.train.steps == 300
    assert said == [
        "train.time_budget_s=600 is dropped for the sweep: every run takes all 300 RL steps (equal steps across "
        "λ), however long that takes"
    ]
    said.clear()
    sweep_base(base, said.append)
    assert said == []


def test_a_sweep_refuses_what_would_mix_its_runs_or_cannot_run() -> None:
    with pytest.raises(ConfigError, match=r"run\.ledger_uri=/tmp/shared would put every run of the sweep in one"):
        sweep_base(load_config(ECHO_TOY, ["run.ledger_uri=/tmp/shared"]), print)
    verifier_free = load_config(ECHO_TOY, ["learner.loss.echo.verifier_free=true"])
    with pytest.raises(ConfigError, match=r"λ = 0, seed 3 is invalid: learner\.loss\.echo: .*nothing would train"):
        arm_config(verifier_free, 0.0, 3)


def test_only_a_finished_run_of_the_same_config_is_read_back(tmp_path: Path) -> None:
    config = load_config(ECHO_TOY, [f"run.dir={tmp_path}"])
    arm = plan(config, [0.05], [0])[0]
    assert earlier_run(arm) == (None, "")
    summary = prepare_run_dir(arm.config, "train") / "summary.json"  # a run that stopped before its summary
    assert earlier_run(arm) == (None, "its earlier run did not finish")
    for written, why in [
        ({"rl_steps": 7, "interrupted": True}, "its earlier run stopped at RL step 7 of 300"),
        ({"rl_steps": 120, "interrupted": False}, "its earlier run stopped at RL step 120 of 300"),  # a time budget's
        ({"rl_steps": 300, "interrupted": False}, ""),
    ]:
        summary.write_text(json.dumps(written))
        assert earlier_run(arm) == (written if not why else None, why)
    other = plan(load_config(ECHO_TOY, [f"run.dir={tmp_path}", "learner.lr=0.001"]), [0.05], [0])[0]
    assert earlier_run(other) == (None, "its earlier run was made with another config (learner.lr 0.003 → 0.001)")


def _row(lam: float, seed: int, ce: float, solved: dict[str, bool], steps: int = 300) -> dict[str, object]:
    return {
        "lambda": lam,
        "seed": seed,
        "rl_steps": steps,
        "train_reward": 0.5,
        "heldout_pass1": sum(solved.values()) / len(solved),
        "heldout_env_ce_after_warmup": 5.0,
        "heldout_env_ce": ce,
        "heldout_solved": solved,
    }


def test_per_lambda_spread_pooled_pass1_and_tasks_against_lambda_0() -> None:
    rows = [
        _row(0.0, 0, 5.5, {"a": False, "b": True, "c": False}),
        _row(1.0, 0, 1.5, {"a": True, "b": False, "c": True}),
        _row(0.0, 1, 5.7, {"a": False, "b": False, "d": True}),
        _row(1.0, 1, 2.5, {"a": True, "b": False, "d": True}),
    ]
    zero, one = per_lambda(rows)
    assert zero["seeds"] == one["seeds"] == [0, 1]
    assert one["heldout_env_ce"] == {"mean": 2.0, "min": 1.5, "max": 2.5}
    assert one["heldout_pass1"] == {"mean": pytest.approx(2 / 3), "min": pytest.approx(2 / 3), "max": 2 / 3}
    # λ = 1 solved 4 of 6 episodes: p = 2/3, s.e. = √(2/3 · 1/3 / 6) = √(1/27) = 0.19245
    assert one["heldout_episodes"] == {"solved": 4, "played": 6, "stderr": pytest.approx(math.sqrt(1 / 27))}
    # seed 0: gained a and c, lost b; seed 1: gained a, d solved by both. 3 against 1 of 4 differing:
    # P(≤ 1 of 4) = (1 + 4) / 16, two-sided 10/16
    assert one["against_lambda0"] == {"gained": 3, "lost": 1, "sign_test_p": 0.625}
    assert "against_lambda0" not in zero and zero["heldout_episodes"]["solved"] == 2


def test_sign_test_p_values() -> None:
    assert sign_test_p(0, 0) == 1.0
    assert sign_test_p(5, 0) == sign_test_p(0, 5) == 2 / 32  # all 5 one way: 2 · (1/2)^5
    assert sign_test_p(3, 3) == 1.0


def test_lambda_0_sits_a_decade_left_of_the_smallest_positive_lambda() -> None:
    assert x_positions([0.0, 0.005, 1.0]) == {0.0: pytest.approx(0.0005), 0.005: 0.005, 1.0: 1.0}


def test_lambdas_without_a_sweep_is_refused() -> None:
    from orchestrator.cli import app

    for args, said in [
        (["--lambdas", "0,1"], "--lambdas sets the λ values of a sweep: give --ablation SEEDS too"),
        (["--ablation", "1", "--lambdas", "0,x"], "expected numbers separated by commas"),
    ]:
        result = CliRunner().invoke(app, ["train", str(ECHO_TOY), *args])
        assert result.exit_code == 2 and said in " ".join(result.output.split())  # unfolded


TINY = [
    "train.steps=2",
    "train.warmup_steps=1",
    "train.warmup_batch=2",
    "train.anchor_batch=1",
    "train.groups_per_step=1",
    "train.eval_every=2",
    "train.eval_tasks=3",
    "train.checkpoint_every=2",
]


def _sweep(runs: Path) -> subprocess.CompletedProcess[str]:
    sets = [arg for item in (*TINY, f"run.dir={runs}") for arg in ("--set", item)]
    command = [sys.executable, "-m", "orchestrator", "train", str(ECHO_TOY), *sets, "--ablation", "1"]
    done = subprocess.run([*command, "--lambdas", "0,0.05,1"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _results(runs: Path) -> dict[str, object]:
    results = json.loads((runs / "echo-toy-lambda-sweep.json").read_text())["results"]
    return {key: results[key] for key in ("lambdas", "per_lambda", "rows")}


def _untouched(run_dir: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.root
def test_a_tiny_sweep_runs_every_lambda_to_equal_steps_then_reruns_nothing_and_resumes(tmp_path: Path) -> None:
    first = _sweep(tmp_path)
    assert "train.time_budget_s=600 is dropped for the sweep" in first.stdout
    assert first.stdout.count("training in") == 3
    results = _results(tmp_path)
    rows = results["rows"]
    assert [(r["lambda"], r["rl_steps"]) for r in rows] == [(0.0, 2), (0.05, 2), (1.0, 2)]
    assert [r["lambda_used"] for r in rows] == pytest.approx([0.0, 0.05, 1.0])  # the loss's, a float32
    for r in rows:  # the pass@1 of the summary is the final evaluation's tasks, read from the ledger
        assert len(r["heldout_solved"]) == 3 and r["heldout_pass1"] == sum(r["heldout_solved"].values()) / 3
    assert [e["lambda"] for e in results["per_lambda"]] == [0.0, 0.05, 1.0]
    assert (tmp_path / "echo-toy-lambda-sweep.png").stat().st_size > 0
    record = json.loads((tmp_path / "echo-toy-lambda-sweep.json").read_text())
    assert record["config"]["train"]["time_budget_s"] is None and len(record["machine"]["load_avg_1_5_15_min"]) == 3
    before = {r["run_dir"]: _untouched(Path(r["run_dir"])) for r in rows}

    again = _sweep(tmp_path)  # nothing new: every run is read back, the same table comes out
    assert "training in" not in again.stdout and again.stdout.count("finished before, read back") == 3
    assert {d: _untouched(Path(d)) for d in before} == before
    assert _results(tmp_path) == results

    stopped = tmp_path / "echo-toy-lambda0.05-s0"
    (stopped / "summary.json").unlink()  # as a run stopped midway leaves it
    resumed = _sweep(tmp_path)
    assert "run 2 of 3 (λ = 0.05, seed 0): its earlier run did not finish; training in" in resumed.stdout
    assert resumed.stdout.count("finished before, read back") == 2
    assert [p.name.startswith("echo-toy-lambda0.05-s0.replaced-") for p in tmp_path.iterdir()].count(True) == 1
    assert [r["rl_steps"] for r in _results(tmp_path)["rows"]] == [2, 2, 2]
