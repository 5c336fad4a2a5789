"""Deterministic GRPO groups, and pass@k worked out by hand."""

from __future__ import annotations

import pytest

from envs.authoring.registry import load_suite
from orchestrator.report import pass_at_k, summarize
from orchestrator.schedule import round_of_groups
from tests.factories import trajectory
from trainers.trajectory import DoneReason


def test_groups_repeat_across_runs_and_differ_across_rounds_and_tags() -> None:
    suite = load_suite("toy_terminal")
    make = lambda **kw: round_of_groups(suite, "train", run_seed=3, group_size=4, **kw)  # noqa: E731
    first, again = make(round_index=0), make(round_index=0)
    assert [(g.group_id, g.seeds) for g in first] == [(g.group_id, g.seeds) for g in again]
    assert {g.task.id for g in first} == {t.id for t in suite.tasks("train")}
    assert all(len(set(g.seeds)) == 4 for g in first)  # G distinct samples per task
    assert [g.task.id for g in make(round_index=1)] != [g.task.id for g in first]  # reshuffled per round
    assert {g.group_id for g in make(round_index=0, tag="eval")}.isdisjoint({g.group_id for g in first})
    episodes = first[0].episodes("run")
    assert [e.sample_index for e in episodes] == [0, 1, 2, 3] and {e.group_id for e in episodes} == {first[0].group_id}


def test_pass_at_k_by_hand() -> None:
    # n=4 samples, c=1 correct: pass@1 = 1/4; pass@2 = 1 - C(3,2)/C(4,2) = 1 - 3/6 = 1/2.
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    assert pass_at_k(4, 0, 4) == 0.0 and pass_at_k(4, 4, 1) == 1.0
    assert pass_at_k(4, 2, 3) == 1.0  # only 2 wrong: any 3 include a correct one
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)


def test_summary_per_split() -> None:
    # Task a: 1 of 2 correct → pass@1 0.5; task b: 2 of 2 → 1.0; split mean 0.75.
    trajectories = [
        trajectory("g-a", 0, task_id="a", reward=1.0),
        trajectory("g-a", 1, task_id="a", reward=0.0, done=DoneReason.STEP_LIMIT),
        trajectory("g-b", 0, task_id="b", reward=1.0),
        trajectory("g-b", 1, task_id="b", reward=1.0),
        trajectory("h-a", 0, task_id="a", reward=0.0, split="heldout", done=DoneReason.SANDBOX_ERROR),
        trajectory("h-a", 1, task_id="a", reward=1.0, split="heldout"),
    ]
    train, heldout = sorted(summarize(trajectories, [1, 2]), key=lambda r: r.split, reverse=True)
    assert train.split == "train" and train.pass_at == {1: 0.75, 2: 1.0} and train.mean_reward == 0.75
    assert train.done_reasons == {"finished": 3, "step_limit": 1}
    # Held-out task a: 1 of 2 correct → pass@1 0.5, pass@2 1.0; a failed episode still counts as a sample.
    assert heldout.tasks == 1 and heldout.pass_at == {1: 0.5, 2: 1.0}
    assert heldout.done_reasons == {"sandbox_error": 1, "finished": 1}
