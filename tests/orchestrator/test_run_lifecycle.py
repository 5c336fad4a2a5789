"""What a command leaves under run.dir: nothing when it fails before recording anything (and the
run it would have replaced back in place), a failed run with its error when it fails later, and
`runs ls` naming the command and the state — the real CLI for the mistakes users make."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hillclimb.config import load_config
from orchestrator import provenance
from orchestrator.run_dirs import run_info
from orchestrator.run_lifecycle import prepare_run_dir, run_directory
from tests.factories import say_package
from tests.orchestrator.episodes_for_tests import record_groups

REPO = Path(__file__).parents[2]


def _hillclimb(*args: str, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), str(REPO)])
    command = [sys.executable, "-m", "orchestrator", *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120, env=env)


def _train(root: Path, *overrides: str, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    sets = [arg for item in (f"run.dir={root}", "run.metrics_port=null", *overrides) for arg in ("--set", item)]
    return _hillclimb("train", "configs/echo_toy.yaml", *sets, pythonpath=pythonpath)


def _finished_run(root: Path) -> Path:
    """An earlier echo-toy run that finished, as `hillclimb train` left it."""
    run_dir = prepare_run_dir(load_config(REPO / "configs" / "echo_toy.yaml", [f"run.dir={root}"]), "train")
    (run_dir / "metrics.jsonl").write_text(json.dumps({"kind": "train", "step": 300, "train_reward": 0.9}) + "\n")
    (run_dir / "summary.json").write_text(json.dumps({"rl_steps": 300, "interrupted": False}))
    return run_dir


def test_a_typod_environment_leaves_no_run_and_the_earlier_one_in_place(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    earlier = _finished_run(root)
    for _ in range(2):  # each retry under run.resume=false (echo_toy.yaml's) used to add a *.replaced-* dir
        done = _train(root, "env.name=toy_terminl")
        assert done.returncode == 2 and "did you mean 'toy_terminal'" in " ".join(done.stderr.split())
    assert [p.name for p in root.iterdir()] == ["echo-toy"]
    assert json.loads((earlier / "summary.json").read_text())["rl_steps"] == 300
    assert "the earlier run is back at" in " ".join(done.stdout.split())
    listed = _hillclimb("runs", "ls", "--root", str(root))
    assert listed.stdout.splitlines()[1].split()[:4] == ["echo-toy", "train", "toy_terminal", "300/300"]


def test_a_missing_model_leaves_nothing(tmp_path: Path) -> None:
    done = _train(tmp_path / "runs", "policy.model={type: hf, name_or_path: /no/such/model}")
    assert done.returncode == 2 and "no such file or directory" in done.stderr
    assert list((tmp_path / "runs").iterdir()) == []


def test_runs_replaced_within_one_second_each_keep_their_own_place(tmp_path: Path) -> None:
    config = load_config(REPO / "configs" / "echo_toy.yaml", [f"run.dir={tmp_path}"])
    for n in range(3):  # a sweep that restarts an unfinished run does this back to back
        (prepare_run_dir(config, "train") / "mark").write_text(str(n))
    asides = sorted(p for p in tmp_path.iterdir() if p.name.startswith("echo-toy.replaced-"))
    assert sorted((p / "mark").read_text() for p in asides) == ["0", "1"]


def test_a_missing_oracle_leaves_nothing(tmp_path: Path) -> None:
    say_package(tmp_path / "pkgs", "unsolved_cli", [{"id": "open-ended", "split": "train", "prompt": "say anything"}])
    done = _train(tmp_path / "runs", "env.name=unsolved_cli:ENVIRONMENT", pythonpath=tmp_path / "pkgs")
    assert done.returncode == 2 and "MissingOracleError" in done.stderr, done.stderr[-2000:]
    assert list((tmp_path / "runs").iterdir()) == []


def test_a_rollout_of_a_typod_environment_leaves_nothing(tmp_path: Path) -> None:
    sets = ["--set", f"run.dir={tmp_path / 'runs'}", "--set", "env.name=toy_terminl"]
    done = _hillclimb("rollout", "configs/rollout_toy.yaml", *sets)
    assert done.returncode == 2 and "toy_terminl" in done.stderr
    assert list((tmp_path / "runs").iterdir()) == []


def _config(root: Path, *overrides: str):  # type: ignore[no-untyped-def]
    return load_config(REPO / "configs" / "rollout_toy.yaml", [f"run.dir={root}", *overrides])


def test_a_run_that_fails_after_recording_shows_as_failed_with_its_error(tmp_path: Path) -> None:
    config = _config(tmp_path)
    with pytest.raises(RuntimeError, match="sandbox provider went away"), run_directory(config, "eval") as run_dir:
        record_groups(run_dir / "ledger", {"eval-heldout-r0-t0": [{"task_id": "t0"}]})
        raise RuntimeError("sandbox provider went away")
    info = run_info(run_dir)
    assert (info.kind, info.state, info.error) == ("eval", "failed", "RuntimeError: sandbox provider went away")
    shown = _hillclimb("runs", "show", str(run_dir))
    assert "eval, failed" in shown.stdout and "failed: RuntimeError: sandbox provider went away" in shown.stdout

    with run_directory(config.model_copy(update={"run": config.run.model_copy(update={"resume": True})}), "eval"):
        assert run_info(run_dir).state == "interrupted"  # running again: failed no longer


def test_ctrl_c_before_anything_is_recorded_leaves_nothing_and_after_is_not_a_failure(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt), run_directory(_config(tmp_path), "rollout"):
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(KeyboardInterrupt), run_directory(_config(tmp_path), "rollout") as run_dir:
        record_groups(run_dir / "ledger", {"eval-heldout-r0-t0": [{"task_id": "t0"}]})
        raise KeyboardInterrupt
    assert (run_info(run_dir).state, run_info(run_dir).error) == ("interrupted", None)


def test_runs_ls_names_the_command_that_made_each_run(tmp_path: Path) -> None:
    """A training run with nothing written yet used to be listed as a rollout, an eval always was."""
    for kind in ("train", "rollout", "eval"):
        run_dir = prepare_run_dir(_config(tmp_path, f"run.name={kind}-run"), kind)  # type: ignore[arg-type]
        assert run_info(run_dir).kind == kind
    listed = _hillclimb("runs", "ls", "--root", str(tmp_path))
    kinds = {line.split()[0]: line.split()[1] for line in listed.stdout.splitlines()[1:]}
    assert kinds == {"train-run": "train", "rollout-run": "rollout", "eval-run": "eval"}


def test_a_run_names_the_commit_of_the_code_that_made_it(tmp_path: Path) -> None:
    run_dir = prepare_run_dir(_config(tmp_path, "run.name=credited"), "train")
    assert json.loads((run_dir / "run.json").read_text())["commit"] == provenance.commit() != "unknown"
