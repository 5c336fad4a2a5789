"""Resuming a run only under a config with the same results; otherwise refuse, naming the keys."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hillclimb.config import load_config
from hillclimb.errors import ConfigError
from orchestrator.evaluate import plan_evaluation
from orchestrator.fingerprint import fingerprint
from orchestrator.run_lifecycle import prepare_run_dir
from tests.factories import group

REPO = Path(__file__).parents[2]
TOY = REPO / "configs" / "rollout_toy.yaml"


def _config(tmp_path: Path, *overrides: str):  # type: ignore[no-untyped-def]
    return load_config(TOY, [f"run.dir={tmp_path}", *overrides])


def test_a_config_that_changes_results_is_refused_naming_the_keys(tmp_path: Path) -> None:
    prepare_run_dir(_config(tmp_path), "rollout")
    with pytest.raises(ConfigError, match=r"rollout\.episode\.max_turns 8 → 1.*run\.resume=false") as refused:
        prepare_run_dir(_config(tmp_path, "rollout.episode.max_turns=1"), "rollout")
    assert "provider" not in str(refused.value)
    with pytest.raises(ConfigError, match=r"provider\.type 'local' → 'docker'"):
        prepare_run_dir(_config(tmp_path, "provider.type=docker"), "rollout")


def test_the_readmes_group_size_example_is_refused_up_front(tmp_path: Path) -> None:
    """It used to crash at the end: pass@8 needs 8 samples per task, the resumed groups had 4."""
    prepare_run_dir(_config(tmp_path), "rollout")
    with pytest.raises(ConfigError, match=r"rollout\.group_size 4 → 8"):
        prepare_run_dir(_config(tmp_path, "rollout.group_size=8", "eval.k=[1,8]"), "rollout")


def test_keys_that_do_not_change_results_may_change(tmp_path: Path) -> None:
    first = prepare_run_dir(_config(tmp_path), "rollout")
    again = prepare_run_dir(
        _config(tmp_path, "run.metrics_port=null", "ray.num_workers=5", "rollout.concurrency=3", "eval.k=[1,2]"),
        "rollout",
    )
    assert again == first
    assert json.loads((first / "config.json").read_text())["ray"]["num_workers"] == 5


def test_a_key_added_since_a_run_was_made_reads_as_its_default(tmp_path: Path) -> None:
    """Adding `rollout.skill` made every earlier run refuse to resume: its config.json lacked the key."""
    run_dir = prepare_run_dir(_config(tmp_path), "rollout")
    stored = json.loads((run_dir / "config.json").read_text())
    del stored["rollout"]["skill"]
    (run_dir / "config.json").write_text(json.dumps(stored))
    assert prepare_run_dir(_config(tmp_path), "rollout") == run_dir
    with pytest.raises(ConfigError, match=r"rollout\.skill None → 'Be brief\.'"):
        prepare_run_dir(_config(tmp_path, "rollout.skill='Be brief.'"), "rollout")


def test_a_remote_policys_transport_settings_may_change_but_not_its_model_or_server(tmp_path: Path) -> None:
    """A rerun of `hillclimb eval` with its default pacing was refused as a different evaluation."""
    chat = ["policy.type=chat", "policy.model=m", "policy.base_url=http://h:1/v1"]
    first = prepare_run_dir(_config(tmp_path, *chat), "eval")
    pacing = ["policy.max_concurrency=2", "policy.backoff_s=0.01", "policy.timeout_s=5", "policy.max_retries=0"]
    assert prepare_run_dir(_config(tmp_path, *chat, *pacing, "policy.api_key_env=MY_KEY"), "eval") == first
    for changed in ("policy.model=n", "policy.base_url=http://h:2/v1"):
        with pytest.raises(ConfigError, match=changed.partition("=")[0].replace(".", r"\.")):
            prepare_run_dir(_config(tmp_path, *chat, changed), "eval")


def test_the_fingerprint_leaves_out_where_and_how_fast() -> None:
    keys = fingerprint(load_config(TOY).model_dump(mode="json"))
    assert "rollout.episode.max_turns" in keys and "provider.type" in keys and "run.seed" in keys
    assert not {k for k in keys if k.startswith(("ray.", "pool.", "run.dir", "run.name", "run.metrics"))}


def test_resume_false_sets_the_old_run_aside_and_starts_fresh(tmp_path: Path) -> None:
    run_dir = prepare_run_dir(_config(tmp_path), "rollout")
    (run_dir / "ledger").mkdir()
    said: list[str] = []
    fresh = prepare_run_dir(
        _config(tmp_path, "run.resume=false", "rollout.episode.max_turns=1"), "rollout", said.append
    )
    assert fresh == run_dir and not (fresh / "ledger").exists()
    (aside,) = [p for p in tmp_path.iterdir() if p.name.startswith("rollout-toy.replaced-")]
    assert (aside / "ledger").is_dir() and str(aside) in said[0]


def test_the_plan_counts_resumed_and_remaining_episodes(tmp_path: Path) -> None:
    config = _config(tmp_path)
    run_dir = prepare_run_dir(config, "rollout")
    plan = plan_evaluation(config, run_dir)
    assert plan.resumed_episodes == 0 and plan.todo_episodes == 4 * len(plan.groups)
    done = plan.groups[0].group_id
    plan.ledger.append(group(done, size=4))
    resumed = plan_evaluation(config, run_dir)
    assert resumed.resumed_episodes == 4 and resumed.todo_episodes == 4 * (len(plan.groups) - 1)
    assert done not in {g.group_id for g in resumed.todo}


def _rollout(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "orchestrator", "rollout", str(TOY), "--set", f"run.dir={tmp_path}"]
    command += [arg for o in overrides for arg in ("--set", o)]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)


def _pass1(stdout: str) -> list[str]:
    return re.findall(r"│ (?:train|heldout)\s+│\s+\d+\s+│\s+\d+\s+│\s+([\d.]+)", stdout)


@pytest.mark.ray
@pytest.mark.root
@pytest.mark.slow
def test_a_rerun_with_another_turn_limit_is_refused_then_runs_fresh(tmp_path: Path) -> None:
    small = ("rollout.group_size=1", "eval.k=[1]", "ray.num_workers=1")
    first = _rollout(tmp_path, *small)
    assert first.returncode == 0, first.stderr[-2000:]
    assert _pass1(first.stdout) == ["1.000", "1.000"]
    assert "Token authentication" not in first.stderr  # the local Ray the CLI starts keeps quiet about it

    again = _rollout(tmp_path, *small)
    assert again.returncode == 0, again.stderr[-2000:]
    assert re.search(r"resumed \d+ episodes from .*ledger", again.stdout)
    assert re.search(r"0/0 episodes", again.stdout)  # the bar counts only what this invocation runs

    refused = _rollout(tmp_path, *small, "rollout.episode.max_turns=1")
    assert refused.returncode == 2
    assert "rollout.episode.max_turns 8 → 1" in " ".join(refused.stderr.split())

    fresh = _rollout(tmp_path, *small, "rollout.episode.max_turns=1", "run.resume=false")
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert "starting fresh" in fresh.stdout and "resumed" not in fresh.stdout
    assert _pass1(fresh.stdout) == ["0.000", "0.000"]
