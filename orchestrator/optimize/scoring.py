"""Scoring a skill: its episodes on some groups, played once and ledgered under the skill's hash.

    skill, groups ─► <out>/skills/<sha>/ledger ─► groups not there yet ─► evaluate ─► ledger
                                              └─► Score: each episode's reward by (task, sample)

A rerun reads finished groups back instead of playing them again (the ledger's idea, as for
`hillclimb eval`). The scorer is built knowing the test tasks and refuses them until
`release_test()`, which only the final report calls, after selection has ended.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hillclimb.config.run import RunConfig
from hillclimb.errors import HillclimbError
from hillclimb.skill import skill_sha, with_skill
from orchestrator.evaluate import EvalPlan, evaluate
from orchestrator.ledger import Ledger
from orchestrator.ledger_location import ledger_location
from orchestrator.schedule import GroupSpec
from trainers.trajectory import DoneReason, Trajectory

EpisodeKey = tuple[str, int]
"""(task id, sample index): the same episode slot under two skills."""


UNSCORED = frozenset({DoneReason.POLICY_ERROR, DoneReason.SANDBOX_ERROR})
"""Episodes that ended outside the agent's control (its API or the sandbox failed after their
retries): they say nothing about the skill, so they are played again rather than scored."""


class LeakedTestTaskError(HillclimbError, RuntimeError):
    """Selection asked to play test tasks: the test split is for the final report only."""


class EvaluationIncompleteError(HillclimbError, RuntimeError):
    """Some episodes failed outside the agent's control; a rerun plays them again."""


@dataclass(frozen=True)
class Score:
    """One skill's episodes on some groups."""

    episodes: tuple[Trajectory, ...]

    @property
    def rewards(self) -> dict[EpisodeKey, float]:
        return {(t.task_id, t.sample_index): t.reward for t in self.episodes}

    @property
    def total(self) -> float:
        return sum(t.reward for t in self.episodes)

    @property
    def mean(self) -> float:
        return statistics.fmean(t.reward for t in self.episodes) if self.episodes else 0.0

    @property
    def pass1(self) -> float:
        """Episodes with a positive reward, of all: pass@1 over the groups' samples."""
        return sum(t.reward > 0 for t in self.episodes) / len(self.episodes) if self.episodes else 0.0


class Scorer:
    def __init__(self, config: RunConfig, out: Path, test_task_ids: frozenset[str]) -> None:
        self.config = config
        self.out = out
        self._test = test_task_ids
        self._test_released = False
        self.played: list[str] = []
        """Task ids of every episode played (not read back), in order: what reached the agent."""

    def release_test(self) -> None:
        """Selection has ended: the final report may score the test tasks now."""
        self._test_released = True

    def skill_dir(self, skill: str) -> Path:
        return self.out / "skills" / skill_sha(skill)

    async def score(self, skill: str, groups: list[GroupSpec], on_episodes: Callable[[int], None]) -> Score:
        leaked = sorted({g.task.id for g in groups if g.task.id in self._test})
        if leaked and not self._test_released:
            raise LeakedTestTaskError(
                f"selection asked to play test tasks {leaked[:5]}: the test split is played only for the final report"
            )
        directory = self.skill_dir(skill)
        directory.mkdir(parents=True, exist_ok=True)
        text_file = directory / "skill.md"
        if not text_file.exists():
            text_file.write_text(skill)
        ledger = Ledger(ledger_location(directory, None))
        recorded = ledger.group_ids()
        todo = [g for g in groups if g.group_id not in recorded or has_unscored(ledger, g.group_id)]
        if todo:
            self.played += [g.task.id for g in todo for _ in g.seeds]
            # Only the groups to play: evaluate's own pass@k summary, read back from the ledger, goes unused here.
            await evaluate(with_skill(self.config, skill or None), EvalPlan(ledger, todo, todo), on_episodes)
        episodes = tuple(t for g in groups for t in ledger.read_group(g.group_id).trajectories)
        failed = [t for t in episodes if t.done_reason in UNSCORED]
        if failed:
            first = " ".join(str(failed[0].metadata.get("error", "")).split())  # one line
            raise EvaluationIncompleteError(
                f"{len(failed)} of {len(episodes)} episodes of skill {skill_sha(skill)} ended outside the agent's "
                f"control ({failed[0].done_reason.value}: {first}); the others are kept in {directory}: "
                "rerun the same command to play these again",
                failed=len(failed),
            )
        return Score(episodes)


def has_unscored(ledger: Ledger, group_id: str) -> bool:
    return any(t.done_reason in UNSCORED for t in ledger.read_group(group_id).trajectories)
