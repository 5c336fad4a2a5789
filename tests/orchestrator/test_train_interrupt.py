"""`hillclimb train` stopped by a signal, then resumed under an RL time budget: each step once."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.train import MetricsLog

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.root]

REPO = Path(__file__).parents[2]
SHORT = [
    "train.warmup_steps=2",
    "train.eval_every=2",
    "train.eval_tasks=2",
    "train.groups_per_step=1",
    "train.checkpoint_every=2",
    "train.time_budget_s=null",
    "run.metrics_port=null",
]


def _command(run_dir: Path, *overrides: str) -> list[str]:
    sets = [arg for item in (*SHORT, f"run.dir={run_dir}", *overrides) for arg in ("--set", item)]
    return [sys.executable, "-m", "orchestrator", "train", "configs/echo_toy.yaml", *sets]


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(command: list[str]) -> subprocess.Popen[str]:
    """The run, with SIGINT as a terminal's Ctrl-C finds it, however pytest was started. Under
    `pytest ... &` in a script (no job control) the shell has SIGINT ignored, and an ignored
    signal stays ignored across fork and exec; Python, and so asyncio.run, leave it so (the Unix
    way for a background job), and the run went on to its end and exited 0."""
    return subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint
    )


def _train_steps(run: Path) -> list[int]:
    return [r["step"] for r in MetricsLog(run).read() if r["kind"] == "train"]


def _stop_after_a_step_past_a_checkpoint(child: subprocess.Popen[str], run: Path, sig: signal.Signals) -> None:
    deadline = time.monotonic() + 600
    # The newest step, not any step: an odd step seen only after the next one checkpointed would stop at it.
    while not ((steps := _train_steps(run)) and max(steps) % 2 == 1 and max(steps) > 2):
        assert child.poll() is None and time.monotonic() < deadline, "the run ended before an odd step past 2"
        time.sleep(0.2)
    child.send_signal(sig)


def test_an_interrupted_run_summarizes_then_resumes_without_repeating_steps(tmp_path: Path) -> None:
    run = tmp_path / "echo-toy"
    child = _start(_command(tmp_path, "train.steps=50"))
    _stop_after_a_step_past_a_checkpoint(child, run, signal.SIGTERM)
    out, err = child.communicate(timeout=300)
    assert child.returncode == 130, err[-3000:]
    said = " ".join(out.split())
    assert "interrupted after" in said and "--set run.resume=true" in said
    summary = json.loads((run / "summary.json").read_text())
    assert summary["interrupted"] is True and summary["rl_steps"] == max(_train_steps(run))
    assert {p.name for p in (run / "plots").iterdir()} >= {"train_reward.png", "env_token_ce.png"}
    checkpoint = max(int(p.name.removeprefix("step-")) for p in (run / "checkpoints").iterdir())
    reached = max(_train_steps(run))
    assert reached > checkpoint  # steps after the checkpoint, which the resumed run does again

    # Resumed with a 1 s budget for RL: the warm-up and loading no longer eat it, so it takes steps.
    resumed = subprocess.run(
        _command(tmp_path, "train.steps=50", "train.time_budget_s=1", "run.resume=true"),
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    said = " ".join(resumed.stdout.split())
    assert f"resuming at step {checkpoint} from {run / 'checkpoints' / f'step-{checkpoint:06d}'}" in said
    assert "train.time_budget_s=1 s of RL spent after" in said
    steps = _train_steps(run)
    assert steps == list(range(1, len(steps) + 1)) and len(steps) > checkpoint  # each once, and RL went on
    summary = json.loads((run / "summary.json").read_text())
    assert summary["rl_steps"] == steps[-1] and summary["interrupted"] is False


def test_ctrl_c_stops_the_run_with_its_summary(tmp_path: Path) -> None:
    run = tmp_path / "echo-toy"
    child = _start(_command(tmp_path, "train.steps=50"))
    _stop_after_a_step_past_a_checkpoint(child, run, signal.SIGINT)
    out, err = child.communicate(timeout=300)
    assert child.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "to resume (from" in out
    assert json.loads((run / "summary.json").read_text())["interrupted"] is True


def test_the_run_takes_sigint_even_when_pytest_was_started_ignoring_it() -> None:
    says = "import signal; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"
    probe = [sys.executable, "-c", says]
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # what `pytest ... &` in a script starts with
    try:
        out, _ = _start(probe).communicate(timeout=60)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert out.strip() == "True"


def test_a_run_stopped_after_its_warm_up_resumes_without_repeating_it(tmp_path: Path) -> None:
    run = tmp_path / "echo-toy"
    command = _command(tmp_path, "train.steps=50", "train.warmup_steps=3", "train.checkpoint_every=100")
    child = _start(command)
    deadline = time.monotonic() + 600
    while not (run / "checkpoints" / "step-000000").is_dir():  # the warm-up's checkpoint
        assert child.poll() is None and time.monotonic() < deadline, "the run ended before its warm-up checkpoint"
        time.sleep(0.2)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=300)
    assert child.returncode == 130, err[-3000:]

    resumed = subprocess.run(
        _command(tmp_path, "train.steps=2", "train.warmup_steps=3", "train.checkpoint_every=100", "run.resume=true"),
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    said = " ".join(resumed.stdout.split())
    assert f"resuming after the warm-up from {run / 'checkpoints' / 'step-000000'}" in said
    records = MetricsLog(run).read()
    assert [r["step"] for r in records if r["kind"] == "warmup"] == [0, 1, 2]  # once: not done again
    assert [r["kind"] for r in records].count("eval_initial") == 1
    assert [r["step"] for r in records if r["kind"] == "eval"][0] == 0  # the warmed-up model's evaluation, once
    assert [r["step"] for r in records if r["kind"] == "eval"].count(0) == 1
    assert _train_steps(run) == [1, 2]
    assert json.loads((run / "summary.json").read_text())["warmup_steps"] == 3
