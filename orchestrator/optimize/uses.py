"""The three disjoint uses of an environment's tasks in `hillclimb optimize`, and their groups.

    suite "train" split, shuffled by the seed ─► validation (the first V) │ train (the rest)
    suite "heldout" split ─► test (the first T, or all)

A task's episode seeds depend on the run seed, its use and its id only, never on the skill:
two skills scored on the same groups meet the same tasks with the same seeds (paired).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from envs.authoring.tasks import Task, TaskSuite
from hillclimb.errors import ConfigError
from orchestrator.rollout import derive_seed
from orchestrator.schedule import GroupSpec


class SplitTooSmallError(ConfigError):
    """The environment's splits cannot give the sizes asked for, or too few to decide anything."""


@dataclass(frozen=True)
class TaskUses:
    train: tuple[Task, ...]
    validation: tuple[Task, ...]
    test: tuple[Task, ...]

    def sizes(self) -> str:
        return f"{len(self.train)} train, {len(self.validation)} validation, {len(self.test)} test tasks"


def split_uses(suite: TaskSuite, *, seed: int, validation_tasks: int, test_tasks: int | None) -> TaskUses:
    """Validation carved from the train split, test from the held-out split; sizes that leave a
    use empty are refused, naming them."""
    pool = list(suite.tasks("train"))
    random.Random(derive_seed(seed, "optimize-validation")).shuffle(pool)
    heldout = list(suite.tasks("heldout"))
    random.Random(derive_seed(seed, "optimize-test")).shuffle(heldout)
    test = heldout if test_tasks is None else heldout[:test_tasks]
    sizes = (
        f"{suite.env} has {len(pool)} train-split and {len(heldout)} held-out tasks; "
        f"asked for {validation_tasks} validation, {'all' if test_tasks is None else test_tasks} test"
    )
    if validation_tasks < 1 or validation_tasks >= len(pool):
        raise SplitTooSmallError(
            f"{sizes}: validation takes 1 to {len(pool) - 1} train-split tasks (the rest are for training)"
        )
    if not test:
        raise SplitTooSmallError(f"{sizes}: the test split is empty, so no final score could be reported")
    return TaskUses(tuple(pool[validation_tasks:]), tuple(pool[:validation_tasks]), tuple(test))


def groups(tasks: tuple[Task, ...], use: str, *, env: str, seed: int, rollouts: int) -> list[GroupSpec]:
    """One group of `rollouts` episodes per task, named by `use` (e.g. `validation`, `train-i3`)."""
    specs = []
    for task in tasks:
        group_id = f"optimize-{use}-{task.id}"
        seeds = tuple(derive_seed(seed, group_id, k) for k in range(rollouts))
        specs.append(GroupSpec(group_id, env, task.split, task, seeds))
    return specs


def train_batch(uses: TaskUses, iteration: int, size: int, *, env: str, seed: int, rollouts: int) -> list[GroupSpec]:
    """Iteration `iteration`'s train tasks: `size` of them, drawn afresh each iteration."""
    tasks = list(uses.train)
    random.Random(derive_seed(seed, "optimize-train", iteration)).shuffle(tasks)
    return groups(tuple(tasks[:size]), f"train-i{iteration}", env=env, seed=seed, rollouts=rollouts)
