"""`hillclimb optimize` as a user runs it: the real CLI in a subprocess, the skill-dependent chat agent
on loopback, a built-in proposer or a chat model as the proposer; what it writes; a rerun that
pays for nothing; bad input refused up front, naming what was wrong."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from envs.authoring.registry import load_suite
from orchestrator.optimize.llm_proposer import LLMProposer
from orchestrator.optimize.proposers import Evidence
from orchestrator.optimize.uses import split_uses
from tests.optimize.cli import run_optimize
from tests.optimize.skill_agent import SkillAgent, shows
from tests.trainers.chat_server import ChatServer, Fault
from trainers.policy.chat import ChatPolicy

REPO = Path(__file__).parents[2]
EDITED = "# Skill\nSearch with `grep PATTERN FILE`, then answer.\n"


@pytest.fixture
async def agent() -> AsyncIterator[ChatServer]:
    server = ChatServer(SkillAgent())
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def editor() -> AsyncIterator[ChatServer]:
    """A chat model that edits skills: it answers with a fenced skill among other words."""
    server = ChatServer(
        lambda messages: f"Here is the revision.\n```markdown\n{EDITED}```\nDone.", served_model="editor"
    )
    await server.start()
    yield server
    await server.close()


async def _optimize(server: ChatServer, out: Path, *args: str, env: str = "toy_terminal") -> tuple[int, str]:
    common = [env, "-m", "fake-chat", "--base-url", server.base_url, "--api-key-env", "", "--out", str(out)]
    common += ["--rollouts", "1", "--train-tasks", "8", "--validation-tasks", "16", "--test-tasks", "8"]
    return await run_optimize(*common, "--set", "policy.backoff_s=0.01", *args)


@pytest.mark.ray
@pytest.mark.root
@pytest.mark.slow
async def test_optimize_climbs_with_worked_examples_and_a_rerun_pays_for_nothing(
    agent: ChatServer, tmp_path: Path
) -> None:
    out = tmp_path / "opt"
    code, output = await _optimize(
        agent, out, "--proposer", "examples", "--iterations", "2", "--set", "log.tensorboard={}"
    )
    assert code == 0, output[-3000:]
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    # The bare agent failed every task of the first train batch: no example to show, so no candidate.
    assert [(r["iteration"], r["status"]) for r in history] == [(0, "initial"), (1, "skipped"), (2, "accepted")]
    assert history[1]["note"] == "no successful train episode of a task the skill does not show yet"
    best = (out / "best_skill.md").read_text()
    assert best == history[2]["text"] and best.startswith("## Example: ")
    report = json.loads((out / "report.json").read_text())
    assert report["best"]["test_pass1"] > report["initial"]["test_pass1"]
    assert report["best"]["validation_mean_reward"] > report["initial"]["validation_mean_reward"]
    assert (out / "validation.png").stat().st_size > 0
    assert "candidates accepted" in output and "best_skill.md" in output
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    accepted = [(e.step, e.value) for e in events.Scalars("optimize/accepted")]
    assert accepted == [(0, 1.0), (1, 0.0), (2, 1.0)]
    assert [e.step for e in events.Scalars("optimize/validation_candidate")] == [2]

    requests = len(agent.requests)
    code, again = await _optimize(agent, out, "--proposer", "examples", "--iterations", "2")
    assert code == 0, again[-3000:]
    assert len(agent.requests) == requests + 1  # the policy check only: every evaluation was ledgered
    assert json.loads((out / "report.json").read_text()) == report


@pytest.mark.ray
@pytest.mark.root
@pytest.mark.slow
async def test_a_chat_model_proposes_the_skill(agent: ChatServer, editor: ChatServer, tmp_path: Path) -> None:
    out = tmp_path / "opt"
    args = ["--proposer", "llm", "--proposer-model", "editor", "--proposer-base-url", editor.base_url]
    code, output = await _optimize(agent, out, *args, "--iterations", "1", "--proposer-api-key-env", "")
    assert code == 0, output[-3000:]
    assert (out / "best_skill.md").read_text() == EDITED
    [request] = editor.requests
    assert request["model"] == "editor" and "## Scored episodes" in request["messages"][1]["content"]


@pytest.mark.ray
@pytest.mark.root
@pytest.mark.slow
async def test_a_proposer_api_that_stays_down_stops_cleanly_and_a_rerun_resumes(
    agent: ChatServer, editor: ChatServer, tmp_path: Path
) -> None:
    out = tmp_path / "opt"
    args = ["--proposer", "llm", "--proposer-model", "editor", "--proposer-base-url", editor.base_url]
    args += ["--proposer-api-key-env", "", "--iterations", "1"]
    editor.faults = [Fault(503)] * 3  # the proposer's first try and both retries
    code, output = await _optimize(agent, out, *args, "--set", "policy.max_retries=2")
    flat = " ".join(output.split())
    assert code == 2 and "PolicyUnavailableError" in flat and "rerun the same command to resume" in flat, output
    played = len(agent.requests)
    assert [json.loads(line)["status"] for line in (out / "history.jsonl").read_text().splitlines()] == ["initial"]
    code, output = await _optimize(agent, out, *args, "--set", "policy.max_retries=2")
    assert code == 0, output[-3000:]
    assert (out / "best_skill.md").read_text() == EDITED
    # The rerun replays nothing the first run finished: the empty initial skill (no system message)
    # asked the model check, then played only the test split, for the final report.
    test = {t.prompt for t in split_uses(load_suite("toy_terminal"), seed=0, validation_tasks=16, test_tasks=8).test}
    bare = [r["messages"][0]["content"] for r in agent.requests[played:] if r["messages"][0]["role"] != "system"]
    assert bare[0] == "Reply with OK." and set(bare[1:]) == test


async def test_the_llm_proposer_reads_the_skill_and_scored_episodes(editor: ChatServer) -> None:
    episodes: tuple[dict[str, Any], ...] = (
        {
            "task_id": "a",
            "sample_index": 0,
            "reward": 0.0,
            "done_reason": "finished",
            "prompt": "Q?\nCount rows.",
            "actions": ["answer: 3"],
            "observations": ["wrong"],
        },
        {
            "task_id": "b",
            "sample_index": 0,
            "reward": 1.0,
            "done_reason": "finished",
            "prompt": "Find the port.",
            "actions": ["cat config.yaml", "answer: 8080"],
            "observations": ["port: 8080", "correct"],
        },
    )
    async with ChatPolicy(editor.base_url, "editor") as policy:
        proposal = await LLMProposer(policy).propose(Evidence("# Old skill\n", episodes, 2, 7))
    assert proposal.text == EDITED and "revised by editor" in proposal.note
    assert proposal.usage["completion_tokens"] > 0 and proposal.usage["prompt_tokens"] > 0  # what it billed
    [request] = editor.requests
    user = request["messages"][1]["content"]
    assert "# Old skill" in user and user.index("reward 0") < user.index("reward 1")  # failures first
    assert "task: Count rows." in user and '"cat config.yaml"' in user and request["seed"] == 9
    assert shows(str(proposal.text), "grep")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--validation-tasks", "106"], "has 106 train-split and 29 held-out tasks; asked for 106 validation"),
        (["--rollouts", "1", "--validation-tasks", "2", "--min-gain", "3"], "cannot show a gain of 3"),
        (["--proposer", "oracle"], "--proposer 'oracle': choose one of builtin, examples, demos, rules, prune, llm"),
        (["--proposer", "llm"], "--proposer llm needs --proposer-model"),
        (["--min-gain", "0"], "min_gain must be > 0"),
    ],
)
async def test_bad_input_is_refused_before_anything_runs(
    agent: ChatServer, tmp_path: Path, args: list[str], expected: str
) -> None:
    code, output = await _optimize(agent, tmp_path / "opt", *args)
    assert code == 2 and expected in " ".join(output.split()), output
    assert not agent.requests


async def test_an_unknown_environment_or_model_and_a_binary_skill_are_refused(
    agent: ChatServer, tmp_path: Path
) -> None:
    binary = tmp_path / "skill.md"
    binary.write_bytes(b"\x89PNG\r\n")
    code, output = await _optimize(agent, tmp_path / "a", "--skill", str(binary))
    assert code == 2 and "not UTF-8 text" in output
    code, output = await _optimize(agent, tmp_path / "b", "-m", "no-such-model")
    assert code == 2 and "no-such-model" in output
    code, output = await _optimize(agent, tmp_path / "c", env="no_such_env")
    assert code == 2 and "no_such_env" in output, output
    assert len(agent.requests) == 1  # the model check that found no-such-model missing
