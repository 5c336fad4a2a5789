"""What `hillclimb train` shows while it runs: a bar per phase with its measured pace and the time
left at that pace, a line per evaluation, and what the trainer reports along the way.

    Trainer ─ report(kind, values) ─► TrainDisplay ─┬─ warm-up ━━━━━━ 40/100  action CE 2.1   0.45 s/step  0:27 left
                                                    ├─ train   ━━━━━━ 12/300  reward 0.31 ... 1.20 s/step  5:46 left
                                                    └─ lines: evaluations, learners' placement, resume, warnings

The pace is measured, not assumed: a loaded host's slow warm-up shows as a slow pace and a long
time left from its first steps on, instead of a bar that only fills late.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

if TYPE_CHECKING:
    from rich.progress import TaskID

    from hillclimb.config.run import TrainSection

PACE_WINDOW = 20
"""Steps the pace is measured over: recent enough to follow a host that slows down, long enough
that an evaluation between two steps moves it only a little."""


class StepClock:
    """When each step of one phase finished, in this process; the pace of the last few."""

    def __init__(self, window: int = PACE_WINDOW, now: Callable[[], float] = time.monotonic) -> None:
        self._now = now
        self._ticks: deque[tuple[float, int]] = deque(maxlen=window + 1)

    def tick(self, completed: int) -> None:
        """`completed` steps of the phase are done (a count that only grows)."""
        self._ticks.append((self._now(), completed))

    def seconds_per_step(self) -> float | None:
        """None until two steps were timed here (a resumed run's earlier steps were not)."""
        if len(self._ticks) < 2:
            return None
        (t0, s0), (t1, s1) = self._ticks[0], self._ticks[-1]
        return (t1 - t0) / (s1 - s0) if s1 > s0 else None

    def pace(self, total: int) -> str:
        """`0.52 s/step  2:31 left`, or nothing before the pace is known."""
        per_step = self.seconds_per_step()
        if per_step is None:
            return ""
        left = round(per_step * max(total - self._ticks[-1][1], 0))
        return f"{per_step:.2f} s/step  {_clock(left)} left"


def _clock(seconds: int) -> str:
    """`2:31`, or `1:02:31` from an hour on."""
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class TrainDisplay:
    """The trainer's `report` drawn on a rich `Progress` made with `COLUMNS` (see the module docstring)."""

    COLUMNS = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[pace]}"),
    )

    def __init__(self, progress: Progress, train: TrainSection) -> None:
        self.progress = progress
        self.train = train
        self.warm = progress.add_task("warm-up", total=train.warmup_steps, info="", pace="")
        self.steps = progress.add_task("train", total=train.steps, info="", pace="")
        self.clocks = {self.warm: StepClock(), self.steps: StepClock()}

    def report(self, kind: str, values: dict[str, Any]) -> None:
        if kind == "warmup":
            self._advance(self.warm, values["step"] + 1, f"action CE {values.get('bc/action_ce', 0):.3f}")
        elif kind == "train":
            info = f"reward {values['train_reward']:.2f}  env CE {values.get('echo/ce', float('nan')):.3f}"
            self._advance(self.steps, values["step"], info)
        elif kind.startswith("eval"):
            parts = [f"{k} {v:.3f}" for k, v in values.items() if k.endswith(("env_ce", "pass1"))]
            self._say(f"[dim]{self._evaluation_label(kind, values['step']):>9}[/]  " + "  ".join(parts))
        elif kind == "resume":
            self._resumed(values["checkpoint"], values["step"])
        else:
            self._notice(kind, values)

    def _advance(self, task: TaskID, completed: int, info: str) -> None:
        clock = self.clocks[task]
        clock.tick(completed)
        total = self.train.warmup_steps if task == self.warm else self.train.steps
        self.progress.update(task, completed=completed, info=info, pace=clock.pace(total))

    def _evaluation_label(self, kind: str, step: int) -> str:
        """Which model an evaluation measured: the initial one, the warmed-up one, or step N's."""
        if kind == "eval_initial":
            return "initial"
        return "warm-up" if step == 0 and self.train.warmup_steps else f"step {step:>4}"

    def _resumed(self, checkpoint: str, step: int) -> None:
        where = "after the warm-up" if step == 0 else f"at step {step}"
        self._say(f"resuming {where} from {checkpoint}")
        # The warm-up is in the checkpoint: done, not to do (a resumed run used to show it at 0).
        self.progress.update(self.warm, completed=self.train.warmup_steps, info="done before resuming")
        self.progress.update(self.steps, completed=step)

    def _notice(self, kind: str, values: dict[str, Any]) -> None:
        if kind == "placement":
            ranks = [
                f"rank {p['rank']} on node {(p['node'] or 'local')[:8]} ({p['address']}, {p['device']})"
                for p in values["learners"]
            ]
            self._say("learners: " + ", ".join(ranks))
        elif kind == "oracle_unsolved":
            shown = ", ".join(values["tasks"][:5]) + (" ..." if len(values["tasks"]) > 5 else "")
            self._say(
                f"[yellow]the oracle ends {len(values['tasks'])} task(s) without the reward: {shown}; "
                "check their oracle actions[/]"
            )
        elif kind == "budget":
            self._say(
                f"[yellow]train.time_budget_s={values['time_budget_s']:g} s of RL spent after "
                f"{values['step']} of {self.train.steps} RL steps: stopping early[/]"
            )

    def _say(self, line: str) -> None:
        self.progress.console.print(line, soft_wrap=True)
