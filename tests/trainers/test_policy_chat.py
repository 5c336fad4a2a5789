"""ChatPolicy against a real HTTP server on loopback that speaks the chat-completions JSON."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest

from tests.trainers.chat_server import LOGPROB, Call, ChatServer, Fault, token_ids
from trainers.policy.base import GenerateRequest, Policy, SamplingParams
from trainers.policy.chat import ChatPolicy
from trainers.policy.config import ChatPolicyConfig, make_policy
from trainers.policy.errors import PolicyRequestError, PolicyResponseError, PolicyUnavailableError

KEY = "sk-test-5f2c"
SAMPLING = SamplingParams(max_new_tokens=64, temperature=0.0)
MESSAGES = (
    {"role": "system", "content": "You are a terminal agent."},
    {"role": "user", "content": "Say hi."},
)


def echo_last_user(messages: list[dict[str, str]]) -> str:
    return "you said: " + [m for m in messages if m["role"] == "user"][-1]["content"]


@pytest.fixture
async def server() -> AsyncIterator[ChatServer]:
    server = ChatServer(echo_last_user, api_key=KEY)
    await server.start()
    yield server
    await server.close()


def _policy(server: ChatServer, **kwargs) -> ChatPolicy:
    options = {"api_key": KEY, "api_key_env": "HC_CHAT_KEY", "backoff_s": 0.01, **kwargs}
    return ChatPolicy(server.base_url, "fake-chat", **options)


def _request(text: str = "Say hi.", seed: int | None = 5) -> GenerateRequest:
    return GenerateRequest(prompt_ids=(), seed=seed, messages=({"role": "user", "content": text},))


async def test_messages_go_out_and_text_comes_back_as_its_bytes(server: ChatServer) -> None:
    async with _policy(server) as policy:
        assert isinstance(policy, Policy)
        request = GenerateRequest(prompt_ids=(), seed=5, messages=MESSAGES)
        (generation,) = await policy.generate([request], SAMPLING)
    assert policy.tokenizer.decode(generation.token_ids) == "you said: Say hi."
    assert generation.token_ids == tuple(b"you said: Say hi.")
    assert generation.server_tokens is None and generation.finish_reason == "stop"
    (body,) = server.requests
    assert body == {
        "model": "fake-chat",
        "messages": list(MESSAGES),
        "max_tokens": 64,
        "temperature": 0.0,
        "top_p": 1.0,
        "seed": 5,
    }
    assert server.headers[0]["Authorization"] == f"Bearer {KEY}"


async def test_a_cut_reply_is_a_length_finish(server: ChatServer) -> None:
    async with _policy(server) as policy:
        (generation,) = await policy.generate([_request()], SamplingParams(max_new_tokens=4))
    assert (bytes(generation.token_ids), generation.finish_reason) == (b"you ", "length")


# Only the timeout case needs a short timeout: its first reply comes 3 s after a 1 s timeout, by construction,
# and its retry still has 1 s on loopback; a tight timeout elsewhere would add retries on a loaded host.
@pytest.mark.parametrize(
    ("fault", "timeout_s"),
    [(Fault(429, {"Retry-After": "0.05"}), 30), (Fault(500), 30), (Fault(503), 30), (Fault(delay_s=3.0), 1.0)],
    ids=["429-retry-after", "500", "503", "timeout"],
)
async def test_transient_failures_are_retried(
    server: ChatServer, fault: Fault, timeout_s: float, caplog: pytest.LogCaptureFixture
) -> None:
    server.faults = [fault]
    with caplog.at_level(logging.WARNING, logger="hillclimb.trainers.policy"):
        async with _policy(server, timeout_s=timeout_s) as policy:
            (generation,) = await policy.generate([_request()], SAMPLING)
    assert bytes(generation.token_ids) == b"you said: Say hi."
    assert len(server.requests) == 2
    (line,) = [r.getMessage() for r in caplog.records]
    expected = {429: "HTTP 429: scripted 429", 500: "HTTP 500", 503: "HTTP 503", None: "ReadTimeout"}[fault.status]
    delay = "0.05" if fault.status == 429 else "0.01"  # Retry-After outweighs the 0.01 s backoff
    assert line.startswith(f"POST {server.base_url}/chat/completions failed ({expected}")
    assert line.endswith(f"retry 1/4 in {delay} s")
    assert KEY not in caplog.text


async def test_retries_run_out_into_unavailable(server: ChatServer) -> None:
    server.faults = [Fault(503)] * 3
    async with _policy(server, max_retries=2) as policy:
        with pytest.raises(PolicyUnavailableError, match="failed 3 times; last: HTTP 503") as info:
            await policy.generate([_request()], SAMPLING)
    assert (info.value.attempts, len(server.requests)) == (3, 3)


async def test_a_wrong_key_is_refused_at_once_naming_the_variable(server: ChatServer) -> None:
    async with _policy(server, api_key="sk-wrong") as policy:
        with pytest.raises(PolicyRequestError, match=r"refused the API key: check the key in \$HC_CHAT_KEY") as info:
            await policy.check()
    assert (info.value.status, len(server.requests)) == (401, 1)
    assert "sk-wrong" not in str(info.value) and "Incorrect API key provided: <api key>." in str(info.value)


async def test_an_unknown_model_is_refused_at_once(server: ChatServer) -> None:
    async with ChatPolicy(server.base_url, "gpt-nope", api_key=KEY, backoff_s=0.01) as policy:
        with pytest.raises(PolicyRequestError, match=r"model 'gpt-nope' not found: GET .*/v1/models") as info:
            await policy.generate([_request()], SAMPLING)
    assert (info.value.status, len(server.requests)) == (404, 1)


async def test_the_concurrency_limit_holds_at_the_server(server: ChatServer) -> None:
    server.reply_delay_s = 0.3  # long enough that three requests overlap even on a loaded host
    async with _policy(server, max_concurrency=3) as policy:
        generations = await policy.generate([_request(f"n{i}") for i in range(10)], SAMPLING)
    assert [bytes(g.token_ids).decode() for g in generations] == [f"you said: n{i}" for i in range(10)]
    assert server.max_in_flight == 3


async def test_token_ids_are_kept_exactly_when_the_server_returns_them(server: ChatServer) -> None:
    async with _policy(server, return_token_ids=True) as policy:
        (generation,) = await policy.generate([_request()], SAMPLING)
    assert server.requests[0]["return_token_ids"] is True and server.requests[0]["logprobs"] is True
    tokens = generation.server_tokens
    assert tokens is not None
    assert tokens.prompt_ids == tuple(token_ids("<|user|>Say hi.<|end|><|assistant|>"))
    assert tokens.ids == tuple(token_ids("you said: Say hi.<|end|>"))
    assert tokens.logprobs == (LOGPROB,) * len(tokens.ids)
    assert bytes(generation.token_ids) == b"you said: Say hi."  # the transcript stays the text


TOOL = {"type": "function", "function": {"name": "get_item", "description": "One SKU.", "parameters": {}}}


async def test_offered_tools_go_out_and_a_call_comes_back(server: ChatServer) -> None:
    server.answer = lambda messages: Call("get_item", '{"sku": "A-1"}')
    request = GenerateRequest(prompt_ids=(), messages=MESSAGES, tools=(TOOL,))
    async with _policy(server) as policy:
        (generation,) = await policy.generate([request], SAMPLING)
        (plain,) = await policy.generate([_request()], SAMPLING)
    assert server.requests[0]["tools"] == [TOOL] and server.requests[0]["parallel_tool_calls"] is False
    assert "tools" not in server.requests[1] and "parallel_tool_calls" not in server.requests[1]
    call = generation.tool_call
    assert call is not None and (call.name, call.arguments) == ("get_item", '{"sku": "A-1"}')
    assert call.id.startswith("call_") and generation.token_ids == () and generation.finish_reason == "stop"
    assert plain.tool_call is None and bytes(plain.token_ids) == b'get_item {"sku": "A-1"}'  # no tools offered


async def test_a_malformed_tool_call_is_a_response_error(server: ChatServer) -> None:
    policy = _policy(server)
    reply = {
        "choices": [
            {"message": {"content": None, "tool_calls": [{"id": 7, "function": {}}]}, "finish_reason": "tool_calls"}
        ]
    }
    with pytest.raises(PolicyResponseError, match="chat response lacks choices\\[0\\].message .*'name'"):
        policy._generation(reply)
    await policy.aclose()


async def test_asking_for_token_ids_from_a_server_without_them_is_an_error(server: ChatServer) -> None:
    policy = _policy(server, return_token_ids=True)
    data = await policy._http.post("/chat/completions", {"model": "fake-chat", "messages": list(MESSAGES)})
    with pytest.raises(PolicyResponseError, match="return_token_ids is set, but the reply lacks 'prompt_token_ids'"):
        policy._generation(data)
    await policy.aclose()


async def test_a_request_without_messages_is_refused() -> None:
    policy = ChatPolicy("http://127.0.0.1:1/v1", "m")
    with pytest.raises(PolicyRequestError, match="rollout.renderer=messages"):
        await policy.generate([GenerateRequest(prompt_ids=(1, 2))], SAMPLING)


async def test_the_config_reads_the_key_from_the_named_variable(
    server: ChatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HC_CHAT_KEY", KEY)
    config = ChatPolicyConfig(base_url=server.base_url, model="fake-chat", api_key_env="HC_CHAT_KEY")
    policy = make_policy(config)
    assert isinstance(policy, ChatPolicy)
    async with policy:
        await policy.check()
    assert server.headers[0]["Authorization"] == f"Bearer {KEY}"
    assert KEY not in config.model_dump_json()


def test_an_unset_key_variable_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HC_CHAT_KEY", raising=False)
    with pytest.raises(ValueError, match="'HC_CHAT_KEY', but that environment variable is not set.*api_key_env=null"):
        make_policy(ChatPolicyConfig(model="m", api_key_env="HC_CHAT_KEY"))
