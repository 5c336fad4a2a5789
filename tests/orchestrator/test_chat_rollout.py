"""Episodes of a policy behind a chat API: messages out, text back, the server's ids kept exactly
where it returns them, and every other episode marked untrainable (and refused by the learner)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from envs.authoring.base import tool_methods
from envs.authoring.registry import load_suite
from envs.builtin.inventory import InventoryEnv
from envs.builtin.toy_terminal.fs import execute
from envs.builtin.toy_terminal.tasks import TASKS, ToyTerminalSuite
from hillclimb.config import load_config
from hillclimb.config.rollout import EpisodeConfig
from hillclimb.config.sandboxes import PoolConfig
from hillclimb.errors import ConfigError
from orchestrator.ledger import Ledger
from orchestrator.pool import SandboxPool
from orchestrator.render import MessagesRenderer, Transcript, chat_tool
from orchestrator.rollout import EpisodeRunner
from orchestrator.server_tokens import TEXT_ONLY, stitch
from orchestrator.workers import make_renderer
from providers.contract import SandboxSpec
from providers.local import LocalProvider
from tests.factories import episode_spec
from tests.trainers.chat_server import LOGPROB, Call, ChatServer, render, token_ids, tool_call_problem
from trainers.batching import samples_from_groups
from trainers.losses import LossConfig
from trainers.policy.base import ServerTokens, ToolCall
from trainers.policy.chat import ChatPolicy
from trainers.roles import Role
from trainers.tokenizer import ByteTokenizer
from trainers.trajectory import DoneReason, Trajectory, TrajectoryGroup, UntrainableTrajectoryError

SUITE = load_suite("toy_terminal")
INVENTORY = load_suite("inventory")
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


def test_a_tool_call_is_answered_by_a_tool_message_with_its_id() -> None:
    renderer = MessagesRenderer()
    transcript = renderer.start("How many monitors?")
    call = ToolCall(id="call_1", name="search", arguments='{"query": "monitor"}')
    renderer.add_tool_call(transcript, call, "", 'search {"query": "monitor"}')
    renderer.add_observation(transcript, '[{"sku": "MN-101"}]')
    renderer.add_tool_call(
        transcript, call.model_copy(update={"id": "call_2", "arguments": "{oops"}), "Hm.", "search {oops"
    )
    renderer.add_warning(transcript, "invalid action: not JSON")
    renderer.add_action(transcript, tuple(b"submit"), (0.0,) * 6)
    renderer.add_observation(transcript, "no answer given")
    function = {"name": "search", "arguments": '{"query": "monitor"}'}
    assert transcript.messages == [
        {"role": "user", "content": "How many monitors?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "call_1", "type": "function", "function": function}],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '[{"sku": "MN-101"}]'},
        {
            "role": "assistant",
            "content": "Hm.",
            "tool_calls": [{"id": "call_2", "type": "function", "function": {"name": "search", "arguments": "{oops"}}],
        },
        {"role": "tool", "tool_call_id": "call_2", "content": "[harness] invalid action: not JSON"},
        {"role": "assistant", "content": "submit"},
        {"role": "user", "content": "no answer given"},  # a reply in text is answered as before
    ]
    assert tool_call_problem(transcript.messages, [chat_tool({"name": "search"})]) is None
    # The transcript's ACTION bytes are the action texts the environment got.
    actions = bytes(i for i, r in zip(transcript.ids, transcript.roles, strict=True) if r == Role.ACTION)
    assert actions == b'search {"query": "monitor"}search {oopssubmit'


def test_mcp_tools_become_chat_function_tools() -> None:
    schema = {"type": "object", "properties": {"sku": {"type": "string"}}, "required": ["sku"]}
    assert chat_tool({"name": "get_item", "description": "One SKU.", "inputSchema": schema}) == {
        "type": "function",
        "function": {"name": "get_item", "description": "One SKU.", "parameters": schema},
    }
    assert chat_tool({"name": "list_items"})["function"]["parameters"] == {"type": "object", "properties": {}}


class SystemPromptSuite(ToyTerminalSuite):
    system_prompt = "Be brief."


def test_the_worker_builds_the_messages_renderer_with_the_suites_system_prompt() -> None:
    renderer = make_renderer("messages", ByteTokenizer(), SystemPromptSuite(TASKS))
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
    spec = episode_spec(TASK, group_id="g", seed=3)
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


def _inventory_by_tool_calls(messages: list[dict[str, Any]]) -> Call | str:
    """Plays an inventory task's oracle as native tool calls, after one call with broken JSON."""
    prompt = next(m["content"] for m in messages if m["role"] == "user")
    task = next(t for t in INVENTORY.tasks("train") if t.prompt == prompt)
    turn = sum(1 for m in messages if m["role"] == "assistant")
    if turn == 0:
        return Call("search", '{"query": ')
    name, _, arguments = task.oracle[turn - 1].partition(" ")
    return Call(name, arguments or "{}")


@pytest.mark.root
async def test_a_chat_model_calls_the_environments_mcp_tools(local_provider: LocalProvider) -> None:
    server = ChatServer(_inventory_by_tool_calls)
    await server.start()
    pool = SandboxPool(local_provider, SandboxSpec(env="inventory", run_id="t"), PoolConfig(), shared=True)
    chat = ChatPolicy(server.base_url, "fake-chat", backoff_s=0.01)
    runner = EpisodeRunner(pool, chat, MessagesRenderer(), INVENTORY, EpisodeConfig(max_turns=4))
    task = INVENTORY.tasks("train")[0]
    spec = episode_spec(task, env="inventory", seed=3)
    try:
        trajectory = await runner.run(spec)
    finally:
        await chat.aclose()
        await pool.close()
        await server.close()
    assert (trajectory.done_reason, trajectory.reward, trajectory.parse_errors) == (DoneReason.FINISHED, 1.0, 1)
    # Offered: the environment's own MCP tools (tools/list from its sandbox), one call at a time.
    offered = server.requests[0]["tools"]
    assert sorted(t["function"]["name"] for t in offered) == sorted(tool_methods(InventoryEnv()))
    adjust = next(t["function"] for t in offered if t["function"]["name"] == "adjust_stock")
    assert set(adjust["parameters"]["required"]) == {"sku", "delta"}
    assert all(r["tools"] == offered and r["parallel_tool_calls"] is False for r in server.requests)
    messages = trajectory.metadata["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant", "tool", "assistant", "tool"]
    assert messages[2]["content"].startswith("[harness] invalid action: the arguments of search are not valid JSON")
    for call, reply in zip(messages[1::2], messages[2::2], strict=True):
        assert reply["tool_call_id"] == call["tool_calls"][0]["id"]
    assert trajectory.untrainable is not None  # text only: no server ids
