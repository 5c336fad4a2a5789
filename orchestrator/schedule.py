"""Which episodes to run: GRPO groups of a split's tasks, with seeds that repeat across runs.

A group is G episodes of one task. Its id names the split, the round and the task, and
every seed is derived from the run seed and that id, so a run with the same config
samples the same episodes in the same places, and a resumed run can tell which groups
it already has.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from envs.authoring.tasks import Task, TaskSuite
from hillclimb.splits import Split
from orchestrator.rollout import EpisodeSpec, derive_seed


@dataclass(frozen=True)
class GroupSpec:
    group_id: str
    env: str
    split: str
    task: Task
    seeds: tuple[int, ...]

    def episodes(self, run_id: str) -> list[EpisodeSpec]:
        return [
            EpisodeSpec(
                run_id=run_id,
                env=self.env,
                split=self.split,
                task=self.task,
                group_id=self.group_id,
                sample_index=i,
                seed=seed,
            )
            for i, seed in enumerate(self.seeds)
        ]


def round_of_groups(
    suite: TaskSuite, split: Split, *, run_seed: int, group_size: int, round_index: int, tag: str = "train"
) -> list[GroupSpec]:
    """One group per task of `split`, in an order shuffled per round. `tag` keeps ids of
    different uses (training, an evaluation at step N) apart in one run's ledger."""
    tasks = list(suite.tasks(split))
    random.Random(derive_seed(run_seed, tag, split, round_index)).shuffle(tasks)
    groups = []
    for task in tasks:
        group_id = f"{tag}-{split}-r{round_index}-{task.id}"
        seeds = tuple(derive_seed(run_seed, group_id, k) for k in range(group_size))
        groups.append(GroupSpec(group_id, suite.env, split, task, seeds))
    return groups


def endless_groups(suite: TaskSuite, split: Split, *, run_seed: int, group_size: int, start_round: int = 0):  # type: ignore[no-untyped-def]
    """Rounds over `split` forever (training draws from this)."""
    round_index = start_round
    while True:
        yield from round_of_groups(suite, split, run_seed=run_seed, group_size=group_size, round_index=round_index)
        round_index += 1
