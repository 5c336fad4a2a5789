"""PhaseTimer: each phase's seconds summed over its runs and counted, the rest left as `other_s`."""

from __future__ import annotations

import pytest

from orchestrator import phase_timer
from orchestrator.phase_timer import PhaseTimer


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_phases_sum_their_runs_and_leave_the_rest_to_other(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    monkeypatch.setattr(phase_timer.time, "monotonic", clock)
    timer = PhaseTimer()  # started at 100
    clock.now = 101.0  # 1 s before any phase: other
    with timer.phase("eval"):
        clock.now = 103.5  # 2.5 s
    with timer.phase("bc_step"):
        clock.now = 104.0  # 0.5 s
    with pytest.raises(ValueError), timer.phase("eval"):  # a phase that fails still took its time
        clock.now = 105.5  # 1.5 s
        raise ValueError
    clock.now = 106.0  # 0.5 s more of other
    # eval 2.5 + 1.5 = 4.0 over 2 runs; bc 0.5 over 1; total 6.0; other 6.0 - 4.5 = 1.5
    assert timer.timings() == {
        "eval_s": 4.0,
        "eval_n": 2,
        "bc_step_s": 0.5,
        "bc_step_n": 1,
        "other_s": 1.5,
        "total_s": 6.0,
    }
