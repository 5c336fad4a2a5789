"""Episodes of a policy behind a chat API: messages out, text back, the server's ids kept exactly
where it returns them, and every other episode marked untrainable (and refused by the learner)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from envs.errors import ConfigError
from envs.tasks import load_suite
from envs.toy_terminal.fs import execute
from orchestrator.config import load_config
from orchestrator.ledger import Ledger
from orchestrator.pool import PoolConfig, SandboxPool
from orchestrator.render import MessagesRenderer, Transcript
from orchestrator.rollout import EpisodeConfig, EpisodeRunner, EpisodeSpec
from orchestrator.server_tokens import TEXT_ONLY, stitch
from orchestrator.workers import make_renderer
from providers.base import SandboxSpec
from providers.local import LocalProvider
from tests.trainers.chat_server import LOGPROB, ChatServer, render, token_ids
from trainers.batching import samples_from_groups
from trainers.losses import LossConfig
from trainers.policy.base import ServerTokens
from trainers.policy.chat import ChatPolicy
from trainers.roles import Role
from trainers.tokenizer import ByteTokenizer
from trainers.trajectory import DoneReason, Trajectory, TrajectoryGroup, UntrainableTrajectoryError

SUITE = load_suite("toy_terminal")
TASK = next(t for t in SUITE.tasks("train") if len(t.oracle) >= 2)


def test_the_messages_renderer_keeps_messages_and_their_bytes_with_roles() -> None:
    renderer = MessagesRenderer("Be brief.")
    transcript = renderer.start("Find the error.")
    renderer.add_action(transcript, tuple(b"cat app.log"), (0.0,) * 11)
    renderer.add_observation(transcript, "ERROR disk full\n")
    renderer.add_warning(transcript, "invalid action: empty")
    assert transcript.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Find the error."},
        {"role": "assistant", "content": "cat app.log"},
        {"role": "user", "content": "ERROR disk full\n"},
        {"role": "user", "content": "[harness] invalid action: empty"},
    ]
    assert bytes(transcript.ids).decode() == (
        "Be brief.Find the error.cat app.logERROR disk full\n[harness] invalid action: empty"
    )
    lengths = [(Role.PROMPT, 24), (Role.ACTION, 11), (Role.ENV, 16), (Role.WARNING, 31)]
    assert transcript.roles == [int(role) for role, n in lengths for _ in range(n)]
    assert renderer.stop_token_ids == ()


def test_the_worker_builds_the_messages_renderer_with_the_suites_system_prompt() -> None:
    renderer = make_renderer("messages", ByteTokenizer(), "Be brief.")
    assert isinstance(renderer, MessagesRenderer)
    assert renderer.start("Go.").messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Go."},
    ]


def _turn(messages: list[dict[str, str]], reply: str) -> ServerTokens:
    ids = token_ids(reply + "<|end|>")
    return ServerTokens(prompt_ids=tuple(token_ids(render(messages))), ids=tuple(ids), logprobs=(-1.0,) * len(ids))


def test_turns_that_chain_up_stitch_into_one_exact_sequence() -> None:
    first = [{"role": "user", "content": "go"}]
    second = [*first, {"role": "assistant", "content": "ls"}, {"role": "user", "content": "a.txt"}]
    stitched = stitch([_turn(first, "ls"), _turn(second, "cat a.txt")])
    assert isinstance(stitched, Transcript)
    assert stitched.ids == token_ids(render(second) + "cat a.txt<|end|>")
    prompt, action, tail = (
        len(token_ids(render(first))),
        len(token_ids("ls<|end|>")),
        len(token_ids("<|user|>a.txt<|end|><|assistant|>")),
    )
    roles = [Role.PROMPT] * prompt + [Role.ACTION] * action + [Role.SCAFFOLD] * tail
    assert stitched.roles[: len(roles)] == [int(r) for r in roles]
    assert [lp for lp, r in zip(stitched.logprobs, stitched.roles, strict=True) if r == Role.ACTION] == [-1.0] * (
        action + len(token_ids("cat a.txt<|end|>"))
    )


def test_a_server_that_rewrites_history_is_named_not_stitched() -> None:
    first = [{"role": "user", "content": "go"}]
    rewritten = [*first, {"role": "user", "content": "a.txt"}]  # the assistant's turn dropped
    reason = stitch([_turn(first, "ls"), _turn(rewritten, "cat a.txt")])
    assert isinstance(reason, str) and reason.startswith("turn 1: the server's prompt differs")
    assert f"at token {len(token_ids('<|user|>go<|end|><|'))}" in reason  # where `assistant` became `user`


def test_the_chat_policy_picks_the_messages_renderer_and_only_it() -> None:
    config = load_config(None, ["policy.type=chat", "policy.model=m"])
    assert config.rollout.renderer == "messages"
    with pytest.raises(ConfigError, match="rollout.renderer='plain' with policy.type='chat'"):
        load_config(None, ["policy.type=chat", "policy.model=m", "rollout.renderer=plain"])
    with pytest.raises(ConfigError, match="rollout.renderer='messages' with policy.type='scripted'"):
        load_config(None, ["rollout.renderer=messages"])


@pytest.fixture
async def chat_server() -> AsyncIterator[ChatServer]:
    server = ChatServer()
    await server.start()
    yield server
    await server.close()


async def _episode(provider: LocalProvider, server: ChatServer, **policy: bool) -> Trajectory:
    pool = SandboxPool(provider, SandboxSpec(env="toy_terminal", run_id="t"), PoolConfig(), shared=True)
    chat = ChatPolicy(server.base_url, "fake-chat", backoff_s=0.01, **policy)
    runner = EpisodeRunner(pool, chat, MessagesRenderer(), SUITE, EpisodeConfig())
    spec = EpisodeSpec(run_id="t", env="toy_terminal", split="train", task=TASK, group_id="g", sample_index=0, seed=3)
    try:
        return await runner.run(spec)
    finally:
        await chat.aclose()
        await pool.close()


@pytest.mark.root
async def test_a_text_only_episode_is_recorded_as_text_and_marked_untrainable(
    local_provider: LocalProvider, chat_server: ChatServer, tmp_path: Path
) -> None:
    trajectory = await _episode(local_provider, chat_server)
    assert (trajectory.done_reason, trajectory.reward, trajectory.turns) == (DoneReason.FINISHED, 1.0, len(TASK.oracle))
    assert trajectory.untrainable == TEXT_ONLY
    messages = trajectory.metadata["messages"]
    assert messages[:3] == [
        {"role": "user", "content": TASK.prompt},
        {"role": "assistant", "content": TASK.oracle[0]},
        {"role": "user", "content": execute(TASK.oracle[0])},
    ]
    assert [m["content"] for m in messages if m["role"] == "assistant"] == list(TASK.oracle)
    # Each request carried the conversation so far, and the ids are exactly the text's bytes.
    assert [len(r["messages"]) for r in chat_server.requests] == [1 + 2 * n for n in range(len(TASK.oracle))]
    assert bytes(trajectory.token_ids).decode() == "".join(m["content"] for m in messages)
    ledger = Ledger(str(tmp_path / "ledger"))  # the mark travels with the trajectory
    ledger.append(TrajectoryGroup.of([trajectory]))
    (read_back,) = ledger.read_group("g").trajectories
    assert read_back.untrainable == TEXT_ONLY
    with pytest.raises(UntrainableTrajectoryError, match="g/0 .*untrainable: the chat API returned text only"):
        samples_from_groups([TrajectoryGroup.of([read_back])], LossConfig())


@pytest.mark.root
async def test_the_servers_token_ids_are_kept_exactly(local_provider: LocalProvider, chat_server: ChatServer) -> None:
    trajectory = await _episode(local_provider, chat_server, return_token_ids=True)
    assert trajectory.untrainable is None and trajectory.reward == 1.0
    sent = chat_server.requests[-1]["messages"]
    assert trajectory.token_ids == token_ids(render(sent) + TASK.oracle[-1] + "<|end|>")
    actions = [i for i, r in zip(trajectory.token_ids, trajectory.roles, strict=True) if r == Role.ACTION]
    assert actions == [t for command in TASK.oracle for t in token_ids(command + "<|end|>")]
    assert {lp for lp, r in zip(trajectory.logprobs, trajectory.roles, strict=True) if r == Role.ACTION} == {LOGPROB}
    assert len(trajectory.metadata["messages"]) == 2 * len(TASK.oracle) + 1  # the text is kept beside the ids


@pytest.mark.root
async def test_a_server_that_rewrites_history_gives_an_untrainable_episode(
    local_provider: LocalProvider, chat_server: ChatServer
) -> None:
    chat_server.rewrite_history = True
    trajectory = await _episode(local_provider, chat_server, return_token_ids=True)
    assert trajectory.reward == 1.0
    assert trajectory.untrainable is not None and trajectory.untrainable.startswith("turn 1: ")
