"""Proposers: from the incumbent skill and scored train episodes, an edited skill.

Built in, needing no strong model (each deterministic given its evidence):

- `examples`: a worked example distilled from a successful train episode of a task the skill
  does not show yet — the task, then the actions that solved it;
- `demos`: for a train task the agent failed, its reference solution (the suite's oracle
  actions) as a worked example: what an agent that solves nothing yet can learn from;
- `rules`: a rule against the failure that recurs most among failed train episodes (a harness
  warning such as an unparseable action, running out of turns, a wrong final answer);
- `prune`: the skill without one of its lines (so lines that never help can go);
- `builtin`: the four in turn, one per iteration, each passing to the next when it has nothing.

`llm` (orchestrator/optimize/llm_proposer.py) asks a chat model instead. Whatever a proposer
returns is checked by `proposal_problem` before anything is played.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol

from envs.authoring.tasks import Task
from hillclimb.skill import text_problem
from orchestrator.render import MessagesRenderer
from orchestrator.rollout import derive_seed

WARNING_PREFIX = MessagesRenderer.WARNING_PREFIX


@dataclass(frozen=True)
class Evidence:
    """What a proposer sees: the incumbent skill and its scored train episodes, as text records
    (`chat_episode_record`: prompt, actions, observations with harness warnings, reward)."""

    skill: str
    episodes: tuple[dict[str, Any], ...]
    iteration: int
    seed: int
    tasks: tuple[Task, ...] = ()
    """The train batch's tasks (with their reference solutions, where the suite has them)."""

    def rng(self, purpose: str) -> random.Random:
        return random.Random(derive_seed(self.seed, purpose, self.iteration))

    @property
    def failures(self) -> list[dict[str, Any]]:
        return [e for e in self.episodes if not e["reward"] > 0]

    @property
    def successes(self) -> list[dict[str, Any]]:
        return [e for e in self.episodes if e["reward"] > 0]


@dataclass(frozen=True)
class Proposal:
    text: object
    """The proposed skill: checked, never trusted to be text; None when the proposer has nothing
    to propose from this evidence (recorded as skipped, with its note)."""
    note: str
    """What the proposer did, for the history."""
    usage: dict[str, int] = field(default_factory=dict)
    """Tokens the proposer's own model spent, if it has one."""


class Proposer(Protocol):
    name: str

    async def propose(self, evidence: Evidence) -> Proposal: ...


def proposal_problem(text: object, incumbent: str, max_chars: int) -> str | None:
    """Why a proposal is rejected before it is played (not text, empty, over the cap, no change), or None."""
    problem = text_problem(text, max_chars)
    if problem is not None:
        return problem
    assert isinstance(text, str)
    if not text.strip():
        return "empty"
    if text.strip() == incumbent.strip():
        return "no change to the skill"
    return None


def task_line(prompt: str | None) -> str:
    """The part of a task prompt that says what this task wants: its last non-empty line."""
    lines = [line.strip() for line in (prompt or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def appended(skill: str, block: str) -> str:
    return f"{skill.rstrip()}\n\n{block}\n" if skill.strip() else f"{block}\n"


class ExamplesProposer:
    name = "examples"

    async def propose(self, evidence: Evidence) -> Proposal:
        shown = [e for e in evidence.successes if task_line(e["prompt"]) not in evidence.skill and e["actions"]]
        if not shown:
            return Proposal(None, "no successful train episode of a task the skill does not show yet")
        episode = evidence.rng("examples").choice(sorted(shown, key=lambda e: (e["task_id"], e["sample_index"])))
        steps = "\n".join(f"{n}. `{action.strip()}`" for n, action in enumerate(episode["actions"], 1))
        block = f"## Example: {task_line(episode['prompt'])}\n{steps}"
        return Proposal(appended(evidence.skill, block), f"a worked example from {episode['task_id']}")


FAILURE_RULES = {
    "step_limit": "- Answer as soon as you know: you have a few turns only, and running out of them scores 0.",
    "context_limit": "- Keep each reply short: one action, no explanations.",
}
WRONG_ANSWER_RULE = "- Before the final answer, run a command that shows the fact asked for; never guess."


class RulesProposer:
    name = "rules"

    async def propose(self, evidence: Evidence) -> Proposal:
        causes: Counter[str] = Counter()
        for episode in evidence.failures:
            for cause in failure_causes(episode):
                causes[cause] += 1
        for cause, count in causes.most_common():
            if cause not in evidence.skill:
                return Proposal(appended(evidence.skill, cause), f"a rule against a failure seen {count} time(s)")
        return Proposal(None, "no recurring failure that the skill does not already address")


def failure_causes(episode: dict[str, Any]) -> list[str]:
    """Rules against what went wrong in a failed episode, one per distinct cause."""
    causes = [
        f"- Avoid this, which the harness refused: {text.removeprefix(WARNING_PREFIX).strip()}"
        for text in dict.fromkeys(episode["observations"])
        if text.startswith(WARNING_PREFIX)
    ]
    reason = episode["done_reason"]
    if reason in FAILURE_RULES:
        causes.append(FAILURE_RULES[reason])
    elif not causes:
        causes.append(WRONG_ANSWER_RULE)
    return causes


class PruneProposer:
    name = "prune"

    async def propose(self, evidence: Evidence) -> Proposal:
        lines = evidence.skill.splitlines()
        candidates = [i for i, line in enumerate(lines) if line.strip()]
        if len(candidates) < 2:
            return Proposal(None, "nothing to prune")
        cut = evidence.rng("prune").choice(candidates)
        kept = "\n".join(line for i, line in enumerate(lines) if i != cut)
        return Proposal(kept + "\n", f"without line {cut + 1}: {lines[cut].strip()[:80]!r}")


class DemosProposer:
    name = "demos"

    async def propose(self, evidence: Evidence) -> Proposal:
        oracles = {task.id: task.oracle for task in evidence.tasks if task.oracle}
        failed = [
            e for e in evidence.failures if e["task_id"] in oracles and task_line(e["prompt"]) not in evidence.skill
        ]
        if not failed:
            return Proposal(None, "no failed train task with a reference solution the skill does not show yet")
        episode = evidence.rng("demos").choice(sorted(failed, key=lambda e: (e["task_id"], e["sample_index"])))
        steps = "\n".join(f"{n}. `{action}`" for n, action in enumerate(oracles[episode["task_id"]], 1))
        block = f"## Example: {task_line(episode['prompt'])}\n{steps}"
        return Proposal(appended(evidence.skill, block), f"the reference solution of {episode['task_id']}, failed")


class CycleProposer:
    """Several proposers in turn, starting with iteration k's; one with nothing to propose passes
    to the next, so an iteration is skipped only when none of them has anything."""

    def __init__(self, proposers: list[Proposer]) -> None:
        self.proposers = proposers
        self.name = "+".join(p.name for p in proposers)

    async def propose(self, evidence: Evidence) -> Proposal:
        first = (evidence.iteration - 1) % len(self.proposers)
        passed = []
        for chosen in self.proposers[first:] + self.proposers[:first]:
            proposal = await chosen.propose(evidence)
            if proposal.text is not None:
                return Proposal(proposal.text, f"{chosen.name}: {proposal.note}", proposal.usage)
            passed.append(f"{chosen.name}: {proposal.note}")
        return Proposal(None, "; ".join(passed))


BUILTIN: dict[str, type[ExamplesProposer] | type[DemosProposer] | type[RulesProposer] | type[PruneProposer]] = {
    "examples": ExamplesProposer,
    "demos": DemosProposer,
    "rules": RulesProposer,
    "prune": PruneProposer,
}


def builtin_proposer(name: str) -> Proposer:
    if name == "builtin":
        return CycleProposer([make() for make in BUILTIN.values()])
    return BUILTIN[name]()
