"""`train.eval_tasks`: every evaluation of a run plays the same sample of held-out tasks, so
its pass@1 curve compares like with like; the episodes' seeds still change with the step."""

from __future__ import annotations

from pathlib import Path

from hillclimb.config import load_config
from orchestrator.train import Trainer

REPO = Path(__file__).parents[2]


def _evaluated(trainer: Trainer, step: int) -> list[tuple[str, int]]:
    trainer.step = step
    return [(g.task.id, g.seeds[0]) for g in trainer._heldout_groups()]


def test_each_evaluation_plays_the_same_sample_of_tasks(tmp_path: Path) -> None:
    config = load_config(REPO / "configs" / "echo_toy.yaml", ["train.eval_tasks=5"])
    trainer = Trainer(config, tmp_path)
    at = {step: _evaluated(trainer, step) for step in (0, 7, 100)}
    tasks = [{task for task, _ in episodes} for episodes in at.values()]
    assert len(tasks[0]) == 5 and tasks[0] == tasks[1] == tasks[2]
    assert len({seed for episodes in at.values() for _, seed in episodes}) == 15  # fresh seeds each time
    other = Trainer(load_config(REPO / "configs" / "echo_toy.yaml", ["train.eval_tasks=5", "run.seed=1"]), tmp_path)
    assert {task for task, _ in _evaluated(other, 0)} != tasks[0]  # the sample is the run seed's


def test_without_eval_tasks_every_held_out_task_is_played(tmp_path: Path) -> None:
    trainer = Trainer(load_config(REPO / "configs" / "echo_toy.yaml", ["train.eval_tasks=null"]), tmp_path)
    assert len(_evaluated(trainer, 3)) == len(trainer.suite.tasks("heldout"))
