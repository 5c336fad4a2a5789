"""Mistakes the CLI reports at once, in one line, before anything slow starts."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hillclimb.config import load_config
from hillclimb.errors import ConfigError
from orchestrator.commands.rollout import serve_run_metrics

REPO = Path(__file__).parents[2]


def _hillclimb(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "orchestrator", *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_version() -> None:
    from importlib.metadata import version

    shown = _hillclimb("--version")
    assert shown.returncode == 0 and shown.stdout.strip() == f"hillclimb {version('hillclimb')}"


def test_a_metrics_port_in_use_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = load_config(None, [f"run.metrics_port={port}"]).run
        with pytest.raises(ConfigError, match=f"cannot serve /metrics on 127.0.0.1:{port} .*--metrics-port"):
            serve_run_metrics(run)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("form", ["127.0.0.1:{port}", "ray://127.0.0.1:{port}"])
def test_a_dead_ray_head_fails_in_seconds_naming_its_address(tmp_path: Path, form: str) -> None:
    address = form.format(port=_closed_port())
    began = time.monotonic()
    run = _hillclimb("rollout", "configs/rollout_toy.yaml", "--address", address, "--set", f"run.dir={tmp_path}")
    assert time.monotonic() - began < 30  # Ray itself retries a dead head for a minute or more
    assert run.returncode == 2, run.stderr[-2000:]
    assert f"no Ray head answers at {address}" in " ".join(run.stderr.split())
    assert "Traceback" not in run.stderr


def _hf_policy(name: str):  # type: ignore[no-untyped-def]
    return load_config(None, ["policy.type=hf", f"policy.model={{type: hf, name_or_path: '{name}'}}"]).policy


def test_a_missing_model_directory_is_found_before_anything_starts(tmp_path: Path) -> None:
    from orchestrator.model_check import check_model_available

    with pytest.raises(ConfigError, match="policy.model.name_or_path='/no/such/model': .*no such file or directory"):
        check_model_available(_hf_policy("/no/such/model"))
    with pytest.raises(ConfigError, match="a directory without config.json"):
        check_model_available(_hf_policy(str(tmp_path)))
    (tmp_path / "config.json").write_text("{}")
    check_model_available(_hf_policy(str(tmp_path)))
    check_model_available(load_config(REPO / "configs" / "echo_toy.yaml").policy)  # the tiny model: nothing to find


def test_a_hub_model_that_cannot_be_had_fails_in_seconds(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}  # an empty cache, no network
    began = time.monotonic()
    run = subprocess.run(
        [
            sys.executable, "-m", "orchestrator", "train", "configs/echo_toy.yaml", "--set", f"run.dir={tmp_path}",
            "--set", "policy.model={type: hf, name_or_path: nobody/no-such-model}",
        ],
        cwd=REPO, capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert time.monotonic() - began < 60
    assert run.returncode == 2, run.stderr[-2000:]
    assert "policy.model.name_or_path='nobody/no-such-model': not a local directory" in " ".join(run.stderr.split())
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize(
    ("policy", "said"),
    [
        ("", "the config sets no policy, so policy.type is 'scripted' (the task suites' oracles, for rollouts)"),
        ("policy: {type: chat, model: gpt-4.1-mini}\n", "policy.type is 'chat'"),
    ],
)
def test_training_an_untrainable_policy_says_what_to_set_before_making_the_run(
    tmp_path: Path, policy: str, said: str
) -> None:
    config = tmp_path / "minimal.yaml"
    config.write_text(f"run: {{dir: {tmp_path / 'runs'}, metrics_port: null}}\n{policy}")
    run = _hillclimb("train", str(config))
    assert run.returncode == 2, run.stderr[-2000:]
    assert " ".join(run.stderr.split()) == (
        f"error: ConfigError: training needs a trainable policy, and {said}: set policy.type: hf (a tiny random "
        "model; a pretrained one with policy.model: {type: hf, name_or_path: ...}) or vllm, in the config or "
        "with --set policy.type=hf"
    )
    assert not (tmp_path / "runs").exists()


def test_a_ray_address_without_a_port_is_named(tmp_path: Path) -> None:
    run = _hillclimb("rollout", "configs/rollout_toy.yaml", "--address", "headnode", "--set", f"run.dir={tmp_path}")
    assert run.returncode == 2
    assert "Ray address 'headnode' names no host:port" in " ".join(run.stderr.split())


def test_a_failed_image_build_is_one_line_after_the_scripts_own_words(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "mine"\n')
    command = [sys.executable, "-m", "orchestrator", "image", "build", "--base", "never:pulled", "--env", str(tmp_path)]
    env = {**os.environ, "PYTHON": "/bin/false", "COLUMNS": "200"}  # the script's own check stops it at once
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "build_sandbox_image.sh: /bin/false is not Python 3.11; set PYTHON" in done.stderr
    assert "error: building hillclimb/sandbox:dev failed (exit status 1): see its output above" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
