"""What `hillclimb train` draws: each phase's measured pace and time left, one line per
evaluation saying which model it measured, and a resumed run's bars where the run is."""

from __future__ import annotations

import io

from rich.console import Console
from rich.progress import Progress

from hillclimb.config import load_config
from orchestrator.train_display import StepClock, TrainDisplay


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_pace_is_measured_over_the_last_steps_and_gives_the_time_left() -> None:
    time = FakeTime()
    clock = StepClock(window=2, now=time)
    clock.tick(1)
    assert clock.seconds_per_step() is None and clock.pace(10) == ""  # one step: no pace yet
    for step, seconds in ((2, 2.0), (3, 2.0), (4, 5.0)):  # the host slows down at step 4
        time.now += seconds
        clock.tick(step)
    assert clock.seconds_per_step() == 3.5  # (2 + 5) / 2: the window's two steps, not the first one
    assert clock.pace(10) == "3.50 s/step  0:21 left"  # 6 steps left
    assert clock.pace(4004) == "3.50 s/step  3:53:20 left"  # 4000 × 3.5 s = 14,000 s


def _display(*overrides: str) -> tuple[TrainDisplay, io.StringIO]:
    out = io.StringIO()
    progress = Progress(*TrainDisplay.COLUMNS, console=Console(file=out, width=160), auto_refresh=False)
    train = load_config(None, ["train.warmup_steps=2", "train.steps=10", *overrides]).train
    return TrainDisplay(progress, train), out


def test_each_bar_shows_its_pace_once_two_steps_are_timed() -> None:
    display, _ = _display()
    display.report("warmup", {"step": 0, "bc/action_ce": 3.0})
    assert display.progress.tasks[0].fields["pace"] == ""
    display.report("warmup", {"step": 1, "bc/action_ce": 2.5})
    assert display.progress.tasks[0].fields["pace"].endswith("s/step  0:00 left")  # the warm-up is done
    for step in (1, 2):
        display.report("train", {"step": step, "train_reward": 0.5})
    assert " s/step  " in display.progress.tasks[1].fields["pace"]


def test_the_evaluations_before_and_after_the_warm_up_are_told_apart() -> None:
    """Both used to print as `step    0`."""
    display, out = _display()
    display.report("eval_initial", {"step": 0, "heldout_env_ce": 5.5})
    display.report("eval", {"step": 0, "heldout_env_ce": 4.5, "heldout_pass1": 0.0})
    display.report("eval", {"step": 100, "heldout_env_ce": 1.5, "heldout_pass1": 0.1})
    lines = [line.split()[:2] for line in out.getvalue().splitlines()]
    assert lines == [["initial", "heldout_env_ce"], ["warm-up", "heldout_env_ce"], ["step", "100"]]
    without_warm_up, out = _display("train.warmup_steps=0")
    without_warm_up.report("eval", {"step": 0, "heldout_pass1": 0.0})
    assert out.getvalue().split()[:2] == ["step", "0"]


def test_a_resumed_run_shows_its_warm_up_done_and_its_steps_reached() -> None:
    """A resumed run used to show `warm-up 0/2` for a warm-up its checkpoint already holds."""
    display, out = _display()
    display.report("resume", {"checkpoint": "runs/echo-toy/checkpoints/step-000000", "step": 0})
    assert "resuming after the warm-up from runs/echo-toy/checkpoints/step-000000" in out.getvalue()
    warm, steps = display.progress.tasks
    assert (warm.completed, warm.total, warm.fields["info"]) == (2, 2, "done before resuming")
    display.report("resume", {"checkpoint": "step-000004", "step": 4})
    assert "resuming at step 4 from step-000004" in out.getvalue() and steps.completed == 4
