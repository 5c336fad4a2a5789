"""The selection loop: propose, check, score on train then validation, decide, record.

It is given the train and validation tasks only; the test split is not within its reach (see
final.py), and the scorer refuses test tasks while it runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hillclimb.skill import skill_sha
from orchestrator.chat_eval import chat_episode_record
from orchestrator.optimize.acceptance import AcceptanceRule
from orchestrator.optimize.history import History
from orchestrator.optimize.proposers import Evidence, Proposer, proposal_problem
from orchestrator.optimize.scoring import Score, Scorer
from orchestrator.optimize.uses import TaskUses, groups, train_batch

Progress = Callable[[str, int], Callable[[int], None]]
"""`progress(label, episodes)` opens a bar and returns what advances it."""
Say = Callable[[str], None]


@dataclass(frozen=True)
class LoopSettings:
    env: str
    seed: int
    rollouts: int
    iterations: int
    train_tasks: int
    max_skill_chars: int


class Selection:
    def __init__(
        self,
        settings: LoopSettings,
        uses: TaskUses,
        scorer: Scorer,
        proposer: Proposer,
        rule: AcceptanceRule,
        history: History,
        *,
        progress: Progress,
        say: Say,
        log: Callable[[int, dict[str, float]], None] = lambda iteration, values: None,
    ) -> None:
        self.s = settings
        self._uses = TaskUses(uses.train, uses.validation, ())  # the test split stays out of the loop
        self.scorer = scorer
        self.proposer = proposer
        self.rule = rule
        self.history = history
        self.progress = progress
        self.say = say
        self.log = log

    async def _score(self, skill: str, specs: list[Any], label: str) -> Score:
        return await self.scorer.score(skill, specs, self.progress(label, sum(len(g.seeds) for g in specs)))

    async def run(self, initial: str) -> str:
        """Iterate up to `iterations` (resuming after the history's last line); the best skill."""
        validation = groups(
            self._uses.validation, "validation", env=self.s.env, seed=self.s.seed, rollouts=self.s.rollouts
        )
        if self.history.incumbent() is None:
            score = await self._score(initial, validation, "initial skill, validation")
            self.history.append(_initial_record(initial, score))
            self.log(0, {"validation": score.mean, "accepted": 1.0})
        incumbent = self.history.incumbent()
        assert incumbent is not None
        for iteration in range(self.history.next_iteration, self.s.iterations + 1):
            incumbent = await self._iteration(iteration, incumbent, validation)
        return incumbent

    async def _iteration(self, iteration: int, incumbent: str, validation: list[Any]) -> str:
        started = time.monotonic()
        where = f"iteration {iteration}/{self.s.iterations}"
        batch = train_batch(
            self._uses, iteration, self.s.train_tasks, env=self.s.env, seed=self.s.seed, rollouts=self.s.rollouts
        )
        incumbent_train = await self._score(incumbent, batch, f"{where}: incumbent, train")
        records = tuple(map(chat_episode_record, incumbent_train.episodes))
        evidence = Evidence(incumbent, records, iteration, self.s.seed, tuple(g.task for g in batch))
        proposal = await self.proposer.propose(evidence)
        record: dict[str, Any] = {
            "iteration": iteration,
            "proposer": self.proposer.name,
            "note": proposal.note,
            "usage": proposal.usage,
            "text": proposal.text
            if proposal.text is None or isinstance(proposal.text, str)
            else repr(proposal.text)[:200],
            "sha": skill_sha(proposal.text) if isinstance(proposal.text, str) else None,
            "train": {"incumbent": incumbent_train.mean},
        }
        problem = proposal_problem(proposal.text, incumbent, self.s.max_skill_chars)
        kept = incumbent
        if proposal.text is None:
            record |= {"status": "skipped", "reason": "nothing to propose"}
        elif problem is not None:
            record |= {"status": "invalid", "reason": problem}
        else:
            assert isinstance(proposal.text, str)
            candidate_train = await self._score(proposal.text, batch, f"{where}: candidate, train")
            record["train"]["candidate"] = candidate_train.mean
            if candidate_train.total < incumbent_train.total:
                record |= {"status": "rejected", "reason": "worse than the incumbent on the train batch"}
            else:
                old = await self._score(incumbent, validation, f"{where}: incumbent, validation")
                new = await self._score(proposal.text, validation, f"{where}: candidate, validation")
                decision = self.rule.decide(old, new, seed=self.s.seed + iteration)
                record["validation"] = {
                    "incumbent": old.mean,
                    "candidate": new.mean,
                    "gain": decision.gain,
                    "lower_bound": decision.lower_bound,
                }
                record |= {"status": "accepted" if decision.accepted else "rejected", "reason": decision.reason}
                kept = proposal.text if decision.accepted else incumbent
        record |= {"incumbent_sha": skill_sha(kept), "wall_s": round(time.monotonic() - started, 3)}
        self.history.append(record)
        self.say(f"{where}: {record['status']} ({record['reason']}); {proposal.note}")
        self.log(iteration, {"accepted": float(record["status"] == "accepted"), **_numbers(record)})
        return kept


def _initial_record(skill: str, score: Score) -> dict[str, Any]:
    sha = skill_sha(skill)
    return {
        "iteration": 0,
        "proposer": None,
        "note": "the initial skill",
        "text": skill,
        "sha": sha,
        "status": "initial",
        "reason": "",
        "validation": {"candidate": score.mean, "incumbent": score.mean, "gain": 0.0},
        "incumbent_sha": sha,
    }


def _numbers(record: dict[str, Any]) -> dict[str, float]:
    return {
        f"{use}_{who}": value
        for use in ("train", "validation")
        for who, value in record.get(use, {}).items()
        if who in ("incumbent", "candidate") and isinstance(value, float)
    }
