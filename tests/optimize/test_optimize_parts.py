"""The parts of `hillclimb optimize` that need no agent: the three task uses, the acceptance rule,
the built-in proposers and the checks on what any proposer returns, the history a rerun resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from envs.authoring.registry import load_suite
from orchestrator.optimize.acceptance import AcceptanceRule
from orchestrator.optimize.history import History, OtherOptimizationError, check_settings
from orchestrator.optimize.proposers import (
    Evidence,
    builtin_proposer,
    proposal_problem,
)
from orchestrator.optimize.scoring import Score
from orchestrator.optimize.uses import SplitTooSmallError, groups, split_uses, train_batch
from tests.factories import trajectory

SUITE = load_suite("toy_terminal")


def _score(rewards: dict[tuple[str, int], float]) -> Score:
    return Score(tuple(trajectory(sample=i, task_id=t, reward=r) for (t, i), r in rewards.items()))


def test_train_validation_and_test_are_disjoint_and_fixed_by_the_seed() -> None:
    uses = split_uses(SUITE, seed=3, validation_tasks=16, test_tasks=None)
    train, validation, test = ({t.id for t in part} for part in (uses.train, uses.validation, uses.test))
    assert len(validation) == 16 and len(train) == len(SUITE.tasks("train")) - 16
    assert not (train & validation) and not (train | validation) & test
    assert test == {t.id for t in SUITE.tasks("heldout")}
    assert split_uses(SUITE, seed=3, validation_tasks=16, test_tasks=None) == uses
    assert split_uses(SUITE, seed=4, validation_tasks=16, test_tasks=None).validation != uses.validation
    assert len(split_uses(SUITE, seed=3, validation_tasks=16, test_tasks=5).test) == 5


def test_sizes_that_leave_a_use_empty_are_refused_naming_them() -> None:
    n = len(SUITE.tasks("train"))
    with pytest.raises(SplitTooSmallError, match=rf"{n} train-split and 29 held-out tasks; asked for {n} validation"):
        split_uses(SUITE, seed=0, validation_tasks=n, test_tasks=None)
    with pytest.raises(SplitTooSmallError, match="validation takes 1 to"):
        split_uses(SUITE, seed=0, validation_tasks=0, test_tasks=None)
    with pytest.raises(SplitTooSmallError, match="cannot show a gain of 5"):
        AcceptanceRule(min_gain=5).check_decidable(validation_tasks=2, rollouts=2)
    with pytest.raises(SplitTooSmallError, match="bootstrap over 3 validation tasks bounds nothing"):
        AcceptanceRule(bootstrap_confidence=0.9).check_decidable(validation_tasks=3, rollouts=4)


def test_two_skills_meet_the_same_episodes_and_each_iteration_new_train_tasks() -> None:
    uses = split_uses(SUITE, seed=0, validation_tasks=8, test_tasks=None)
    a = groups(uses.validation, "validation", env="toy_terminal", seed=0, rollouts=3)
    assert a == groups(uses.validation, "validation", env="toy_terminal", seed=0, rollouts=3)
    assert len({s for g in a for s in g.seeds}) == 8 * 3
    one, two = (train_batch(uses, i, 6, env="toy_terminal", seed=0, rollouts=2) for i in (1, 2))
    assert {g.task.id for g in one} != {g.task.id for g in two}
    assert {g.task.id for g in one + two} <= {t.id for t in uses.train}


def test_acceptance_is_strict_paired_improvement_by_the_stated_margin() -> None:
    base = {("a", 0): 0.0, ("a", 1): 1.0, ("b", 0): 0.0, ("b", 1): 0.0}
    rule = AcceptanceRule(min_gain=1)
    assert not rule.decide(_score(base), _score(base), seed=0).accepted  # a tie is no gain
    better = _score({**base, ("b", 0): 1.0})
    decision = rule.decide(_score(base), better, seed=0)
    assert decision.accepted and decision.gain == 1
    assert not AcceptanceRule(min_gain=2).decide(_score(base), better, seed=0).accepted
    with pytest.raises(ValueError, match="cannot be paired"):
        rule.decide(_score(base), _score({("a", 0): 1.0}), seed=0)
    with pytest.raises(ValueError, match="strict"):
        AcceptanceRule(min_gain=0)


def test_the_bootstrap_rejects_a_gain_that_one_task_carries() -> None:
    tasks = [f"t{i}" for i in range(10)]
    old = {(t, k): 0.0 for t in tasks for k in range(2)}
    lucky = {**old, ("t0", 0): 1.0, ("t0", 1): 1.0}  # +2, all on one task
    broad = {**old, **{(t, 0): 1.0 for t in tasks[:6]}}  # +6 over six tasks
    rule = AcceptanceRule(min_gain=1, bootstrap_confidence=0.9)
    no = rule.decide(_score(old), _score(lucky), seed=0)
    assert not no.accepted and no.lower_bound is not None and no.lower_bound <= 0 and "bootstrap" in no.reason
    yes = rule.decide(_score(old), _score(broad), seed=0)
    assert yes.accepted and yes.lower_bound is not None and yes.lower_bound > 0


def _episode(task_id: str, reward: float, actions: list[str], observations: list[str], done: str = "finished") -> dict:
    prompt = next(t.prompt for t in SUITE.tasks("train") if t.id == task_id)
    return {
        "task_id": task_id,
        "sample_index": 0,
        "reward": reward,
        "done_reason": done,
        "prompt": prompt,
        "actions": actions,
        "observations": observations,
    }


async def test_the_examples_proposer_shows_a_solved_task_the_skill_lacks() -> None:
    solved = _episode("cat-app-order", 1.0, ["cat app.log", "answer: 1042"], ["...", "correct"])
    failed = _episode("ls-count", 0.0, ["answer: 3"], ["wrong"])
    proposal = await builtin_proposer("examples").propose(Evidence("# Skill\n", (solved, failed), 1, 0))
    assert isinstance(proposal.text, str)
    assert proposal.text.startswith("# Skill\n\n## Example: ")
    assert "1. `cat app.log`\n2. `answer: 1042`" in proposal.text and "cat-app-order" in proposal.note
    again = await builtin_proposer("examples").propose(Evidence(proposal.text, (solved, failed), 2, 0))
    assert again.text is None and "no successful" in again.note  # nothing new to show


async def test_the_rules_proposer_answers_the_commonest_failure_once() -> None:
    warned = ["[harness] invalid action: unknown command 'print'"]
    failures = (
        _episode("ls-count", 0.0, ["print x"], warned, "step_limit"),
        _episode("cat-app-order", 0.0, ["print y"], warned, "step_limit"),
        _episode("cat-server-payments", 0.0, ["answer: 3"], ["wrong"]),
    )
    first = await builtin_proposer("rules").propose(Evidence("", failures, 1, 0))
    assert first.text == "- Avoid this, which the harness refused: invalid action: unknown command 'print'\n"
    second = await builtin_proposer("rules").propose(Evidence(str(first.text), failures, 2, 0))
    assert isinstance(second.text, str) and "Answer as soon as you know" in second.text


async def test_pruning_drops_one_line() -> None:
    skill = "# Skill\n- one\n- two\n"
    pruned = await builtin_proposer("prune").propose(Evidence(skill, (), 1, 0))
    assert isinstance(pruned.text, str) and len(pruned.text.splitlines()) == 2
    assert set(pruned.text.splitlines()) < set(skill.splitlines())
    assert (await builtin_proposer("prune").propose(Evidence("# Skill\n", (), 1, 0))).text is None


async def test_demos_show_a_failed_train_tasks_reference_solution() -> None:
    tasks = tuple(t for t in SUITE.tasks("train") if t.id in ("ls-count", "cat-app-order"))
    failed = _episode("ls-count", 0.0, ["answer: 3"], ["wrong"])
    proposal = await builtin_proposer("demos").propose(Evidence("", (failed,), 1, 0, tasks))
    oracle = next(t.oracle for t in tasks if t.id == "ls-count")
    assert (
        proposal.text
        == f"## Example: {failed['prompt'].splitlines()[-1]}\n"
        + "".join(f"{n}. `{a}`\n" for n, a in enumerate(oracle, 1)).rstrip("\n")
        + "\n"
    )
    assert (await builtin_proposer("demos").propose(Evidence("", (failed,), 1, 0))).text is None  # no oracle given


async def test_the_builtin_cycle_takes_turns_and_passes_on_when_one_has_nothing() -> None:
    cycle = builtin_proposer("builtin")
    skill = "# Skill\n- one\n- two\n"
    bare = [(await cycle.propose(Evidence(skill, (), i, 0))).note.split(":")[0] for i in (1, 2, 3, 4)]
    assert bare == ["prune"] * 4  # no episodes: nothing to show, to demonstrate or to answer
    tasks = tuple(SUITE.tasks("train"))
    episodes = (
        _episode("cat-app-order", 1.0, ["cat app.log", "answer: 1042"], ["...", "correct"]),
        _episode("ls-count", 0.0, ["answer: 3"], ["wrong"]),
    )
    notes = [(await cycle.propose(Evidence(skill, episodes, i, 0, tasks))).note.split(":")[0] for i in (1, 2, 3, 4, 5)]
    assert notes == ["examples", "demos", "rules", "prune", "examples"]
    nothing = await cycle.propose(Evidence("# Skill\n", (), 1, 0))
    assert nothing.text is None and nothing.note.startswith("examples: ") and "prune: nothing to prune" in nothing.note


def test_a_proposal_that_is_not_a_usable_skill_is_refused_with_its_reason() -> None:
    assert proposal_problem("# Better\n", "# Skill\n", 100) is None
    assert proposal_problem("  \n", "# Skill\n", 100) == "empty"
    assert proposal_problem("# Skill\n", "# Skill\n", 100) == "no change to the skill"
    assert proposal_problem("x" * 101, "", 100) == "101 characters, over the cap of 100"
    assert proposal_problem(b"# bytes", "", 100) == "a skill is text, not bytes"
    assert "control character" in str(proposal_problem("a\x00b", "", 100))


def test_history_resumes_at_the_next_candidate_with_the_kept_skill(tmp_path: Path) -> None:
    history = History.open(tmp_path)
    assert history.incumbent() is None and history.next_iteration == 0
    history.append({"iteration": 0, "text": "A", "sha": "a", "status": "initial", "incumbent_sha": "a"})
    history.append({"iteration": 1, "text": "B", "sha": "b", "status": "accepted", "incumbent_sha": "b"})
    history.append({"iteration": 2, "text": "C", "sha": "c", "status": "rejected", "incumbent_sha": "b"})
    with (tmp_path / "history.jsonl").open("a") as f:
        f.write('{"iteration": 3, "text": "D", "sha')  # a crash mid-line
    again = History.open(tmp_path)
    assert again.next_iteration == 3 and again.incumbent() == "B"


def test_an_output_directory_resumes_only_the_same_optimization(tmp_path: Path) -> None:
    settings = {"env": "toy_terminal", "seed": 0, "iterations": 5}
    check_settings(tmp_path, settings)
    check_settings(tmp_path, {**settings, "iterations": 9})  # more iterations continue it
    assert json.loads((tmp_path / "optimize.json").read_text())["iterations"] == 9
    with pytest.raises(OtherOptimizationError, match=r"other settings \(seed\)"):
        check_settings(tmp_path, {**settings, "seed": 1})
