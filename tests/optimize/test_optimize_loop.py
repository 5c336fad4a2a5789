"""The selection loop against a real agent path: Ray rollout workers, local sandboxes running
toy_terminal, and a chat agent over loopback HTTP whose success depends only on the skill. A
scripted proposer offers helpful, useless, harmful and malformed edits: the loop keeps the helpful
ones only, no test task reaches the agent before the final report, and a rerun pays for nothing
it finished."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from envs.authoring.registry import load_suite
from hillclimb.config import load_config
from orchestrator.chat_eval import eval_overrides
from orchestrator.ledger import Ledger
from orchestrator.ledger_location import ledger_location
from orchestrator.optimize.acceptance import AcceptanceRule
from orchestrator.optimize.final import report_on_test, write_outputs
from orchestrator.optimize.history import History
from orchestrator.optimize.loop import LoopSettings, Selection
from orchestrator.optimize.proposers import Evidence, Proposal, builtin_proposer
from orchestrator.optimize.scoring import EvaluationIncompleteError, LeakedTestTaskError, Scorer, has_unscored
from orchestrator.optimize.uses import TaskUses, groups, split_uses
from tests.optimize.skill_agent import POISON, SkillAgent, lucky, program, shows, solves
from tests.trainers.chat_server import ChatServer

pytestmark = [pytest.mark.ray, pytest.mark.root, pytest.mark.slow]

SUITE = load_suite("toy_terminal")
USES = split_uses(SUITE, seed=0, validation_tasks=12, test_tasks=8)


def _second_program() -> str:
    """The commonest program among validation tasks after grep: an edit showing it must help there."""
    counts = Counter(program(t.id) for t in USES.validation if not lucky(t.id))
    return next(name for name, _ in counts.most_common() if name != "grep")


class ScriptedProposer:
    """Helpful, useless, harmful, malformed, helpful: one edit per iteration."""

    name = "scripted"

    def __init__(self) -> None:
        self.evidence: list[Evidence] = []

    async def propose(self, evidence: Evidence) -> Proposal:
        self.evidence.append(evidence)
        skill = evidence.skill
        edits: dict[int, Any] = {
            1: skill + "Search logs with `grep PATTERN FILE`.\n",
            2: skill + "Be polite.\n",
            3: skill + f"{POISON}\n",
            4: skill.encode(),
            5: skill + f"Also `{_second_program()} FILE` works.\n",
        }
        return Proposal(edits[evidence.iteration], f"edit {evidence.iteration}")


@pytest.fixture
async def agent() -> AsyncIterator[tuple[ChatServer, SkillAgent]]:
    skill_agent = SkillAgent()
    server = ChatServer(skill_agent)
    await server.start()
    yield server, skill_agent
    await server.close()


def _config(server: ChatServer, tmp_path: Path):  # type: ignore[no-untyped-def]
    overrides = eval_overrides(
        "toy_terminal", "fake-chat", rollouts=1, base_url=server.base_url, api_key_env="", splits=[]
    )
    return load_config(None, [*overrides, f"run.dir={tmp_path}", "policy.backoff_s=0.01"])


def _selection(cfg: Any, out: Path, scorer: Scorer, proposer: Any, iterations: int) -> Selection:
    settings = LoopSettings(
        "toy_terminal", seed=0, rollouts=1, iterations=iterations, train_tasks=4, max_skill_chars=400
    )
    return Selection(
        settings,
        USES,
        scorer,
        proposer,
        AcceptanceRule(min_gain=1),
        History.open(out),
        progress=lambda label, total: lambda n: None,
        say=lambda line: None,
    )


async def test_the_loop_keeps_helpful_edits_only_and_never_plays_the_test_split(
    ray_local: None, agent: tuple[ChatServer, SkillAgent], tmp_path: Path
) -> None:
    server, skill_agent = agent
    cfg, out = _config(server, tmp_path), tmp_path / "opt"
    test_ids = {t.id for t in USES.test}
    scorer = Scorer(cfg, out, frozenset(test_ids))
    proposer = ScriptedProposer()
    best = await _selection(cfg, out, scorer, proposer, iterations=5).run("")

    records = History.open(out).records
    assert [r["status"] for r in records] == ["initial", "accepted", "rejected", "rejected", "invalid", "accepted"]
    assert records[2]["reason"].startswith("validation gain +0")  # useless: no change on validation
    assert records[4]["reason"] == "a skill is text, not bytes"
    assert "validation" not in records[4] and "train" in records[4]
    gained = [t for t in USES.validation if program(t.id) == _second_program() and not lucky(t.id)]
    assert records[5]["validation"]["gain"] == len(gained) > 0
    assert shows(best, "grep") and shows(best, _second_program()) and POISON not in best and "polite" not in best
    assert all(r["incumbent_sha"] == records[5]["sha"] for r in records[5:])

    # The proposer saw the incumbent's scored train episodes, as text records, never a test task.
    seen_by_proposer = {e["task_id"] for ev in proposer.evidence for e in ev.episodes}
    assert seen_by_proposer and seen_by_proposer <= {t.id for t in USES.train}
    assert {"prompt", "actions", "observations", "reward"} <= set(proposer.evidence[0].episodes[0])

    # Selection never reached a test task: not at the agent, not in the scorer.
    assert not test_ids & set(skill_agent.seen) and not test_ids & set(scorer.played)
    with pytest.raises(LeakedTestTaskError, match="played only for the final report"):
        await scorer.score(best, groups(USES.test, "test", env="toy_terminal", seed=0, rollouts=1), lambda n: None)

    history = History.open(out)
    report = await report_on_test(
        scorer,
        USES,
        "",
        best,
        history,
        env="toy_terminal",
        seed=0,
        rollouts=1,
        progress=lambda label, total: lambda n: None,
    )
    assert set(skill_agent.seen) & test_ids == test_ids  # only now
    initial, expected = (sum(solves(skill, t.id) for t in USES.test) / len(USES.test) for skill in ("", best))
    assert (report["initial"]["test_pass1"], report["best"]["test_pass1"]) == pytest.approx((initial, expected))
    assert initial < expected
    assert report["accepted"] == 2 and report["candidates"] == 5 and report["sizes"]["test"] == 8
    write_outputs(out, best, report, history)
    assert (out / "best_skill.md").read_text() == best and (out / "validation.png").stat().st_size > 0

    # A rerun with two more iterations replays nothing it finished: only iteration 6 reaches the agent.
    before = len(skill_agent.seen)
    rerun = Scorer(cfg, out, frozenset(test_ids))
    await _selection(cfg, out, rerun, EchoProposer(), iterations=6).run("")
    assert History.open(out).next_iteration == 7
    assert rerun.played and set(skill_agent.seen[before:]) == set(rerun.played)  # (a request is a turn)
    # iteration 6's train batch for both skills, and the candidate's validation (the incumbent's is ledgered)
    assert len(rerun.played) == 4 + 4 + 12


class EchoProposer:
    name = "echo"

    async def propose(self, evidence: Evidence) -> Proposal:
        return Proposal(evidence.skill + "Note.\n", "a new line")


async def test_an_agent_api_that_goes_down_stops_the_loop_and_a_rerun_resumes(
    ray_local: None, agent: tuple[ChatServer, SkillAgent], tmp_path: Path
) -> None:
    server, skill_agent = agent
    cfg, out = _config(server, tmp_path), tmp_path / "opt"
    cfg = cfg.model_copy(update={"policy": cfg.policy.model_copy(update={"max_retries": 1})})
    scorer = Scorer(cfg, out, frozenset())
    selection = _selection(cfg, out, scorer, ScriptedProposer(), iterations=1)
    served = len(skill_agent.seen)
    original = server.answer

    def down_after_five(messages: list[dict[str, Any]]) -> str:
        if len(skill_agent.seen) - served >= 5:
            raise ConnectionError("the agent's server is down")
        return original(messages)

    server.answer = down_after_five
    with pytest.raises(EvaluationIncompleteError, match=r"ended outside the agent's control \(policy_error: .*rerun"):
        await selection.run("")
    assert History.open(out).records == []  # nothing is decided on a partial evaluation
    ledger = Ledger(ledger_location(scorer.skill_dir(""), None))
    scored = [g for g in ledger.group_ids() if not has_unscored(ledger, g)]
    assert 1 <= len(scored) < len(USES.validation)
    server.answer = original
    rerun = Scorer(cfg, out, frozenset())
    await _selection(cfg, out, rerun, ScriptedProposer(), iterations=1).run("")
    assert [r["status"] for r in History.open(out).records] == ["initial", "accepted"]
    # initial on validation, incumbent and candidate on the train batch, candidate on validation
    # (the incumbent's validation is the initial one): all but what the first try scored
    assert len(rerun.played) == 12 + 4 + 4 + 12 - len(scored)


async def test_the_same_seed_and_answers_give_the_same_history(
    ray_local: None, agent: tuple[ChatServer, SkillAgent], tmp_path: Path
) -> None:
    server, _ = agent
    cfg = _config(server, tmp_path)
    histories = []
    for name in ("first", "second"):
        out = tmp_path / name
        await _selection(cfg, out, Scorer(cfg, out, frozenset()), builtin_proposer("builtin"), iterations=3).run("")
        histories.append([{k: v for k, v in r.items() if k != "wall_s"} for r in History.open(out).records])
    assert histories[0] == histories[1]
    assert [r["status"] for r in histories[0]][:2] == ["initial", "accepted"]


def test_uses_reaching_the_loop_have_no_test_tasks() -> None:
    settings = LoopSettings("toy_terminal", 0, 1, 1, 4, 400)
    selection = Selection(
        settings,
        USES,
        Scorer.__new__(Scorer),
        ScriptedProposer(),
        AcceptanceRule(),
        History(Path("/nonexistent"), []),
        progress=lambda label, total: lambda n: None,
        say=print,
    )
    assert selection._uses == TaskUses(USES.train, USES.validation, ())
