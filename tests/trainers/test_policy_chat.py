"""ChatPolicy against a real HTTP server on loopback that speaks the chat-completions JSON."""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import AsyncIterator

import pytest

from hillclimb.config.policy import ChatPolicyConfig
from hillclimb.config.rollout import SamplingParams
from tests.trainers.chat_server import LOGPROB, Call, ChatServer, Fault, token_ids
from trainers.policy.base import GenerateRequest, Policy
from trainers.policy.chat import ChatPolicy
from trainers.policy.errors import (
    PolicyRequestError,
    PolicyResponseError,
    PolicyUnavailableError,
    PolicyUnreachableError,
)
from trainers.policy.factory import make_policy

KEY = "sk-test-5f2c"
SAMPLING = SamplingParams(max_new_tokens=64, temperature=0.0)
MALFORMED = re.compile(r"\.\.|: \.|: ;|\. Is |\n")
"""What a message built of clauses must not hold: `request.. Is`, an empty `ReadTimeout: .`, a second line."""
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


async def test_retries_run_out_on_timeouts_into_a_well_formed_message(server: ChatServer) -> None:
    server.faults = [Fault(delay_s=3.0)] * 2
    async with _policy(server, max_retries=1, timeout_s=0.5) as policy:
        with pytest.raises(PolicyUnavailableError) as info:
            await policy.generate([_request()], SAMPLING)
    assert str(info.value) == (
        f"POST {server.base_url}/chat/completions failed 2 times; last: ReadTimeout: no response within 0.5 s;"
        " is the server up and not overloaded?"
    )


def _free_port() -> int:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens on it
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def unresolvable(monkeypatch: pytest.MonkeyPatch) -> None:
    """`no-such-host.invalid` does not resolve (EAI_NONAME), `flaky-dns.test` fails for now (EAI_AGAIN),
    `two-addresses.test` is 127.0.0.1 and 127.0.0.2: answered here without a query leaving the machine."""
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):  # type: ignore[no-untyped-def]
        name = host.decode() if isinstance(host, bytes) else host  # anyio asks with IDNA bytes
        if name == "no-such-host.invalid":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        if name == "flaky-dns.test":
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        if name == "two-addresses.test":
            port = int(args[0])
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in ("127.0.0.1", "127.0.0.2")]
        assert name == "127.0.0.1", f"a lookup of {name!r} would leave the machine"
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.mark.usefixtures("unresolvable")
@pytest.mark.parametrize("where", ["refused", "refused-on-every-address", "unresolvable"])
async def test_no_server_at_the_url_fails_at_once_in_one_line_naming_it(
    where: str, caplog: pytest.LogCaptureFixture
) -> None:
    port = _free_port()
    base_url = {
        "refused": f"http://127.0.0.1:{port}/v1",
        "refused-on-every-address": f"http://two-addresses.test:{port}/v1",
        "unresolvable": "http://no-such-host.invalid/v1",
    }[where]
    with caplog.at_level(logging.WARNING, logger="hillclimb.trainers.policy"):
        async with ChatPolicy(base_url, "fake-chat", max_retries=4, backoff_s=0.01) as policy:
            with pytest.raises(PolicyUnreachableError) as info:
                await policy.generate([_request()], SAMPLING)
    expected = {
        "refused": f"connection refused: nothing listens at 127.0.0.1:{port}; is the server started, and is the"
        " base URL right?",
        "refused-on-every-address": f"connection refused: nothing listens at two-addresses.test:{port}; is the"
        " server started, and is the base URL right?",
        "unresolvable": "the host name 'no-such-host.invalid' does not resolve (Name or service not known); check"
        " the base URL",
    }[where]
    assert str(info.value) == f"POST {base_url}/chat/completions: {expected}"
    assert (info.value.url, info.value.attempts, info.value.status) == (f"{base_url}/chat/completions", 1, None)
    assert isinstance(info.value, PolicyUnavailableError)  # what callers already catch
    assert caplog.records == []  # not one retry


@pytest.mark.usefixtures("unresolvable")
async def test_a_resolvers_temporary_failure_is_retried() -> None:
    async with ChatPolicy("http://flaky-dns.test/v1", "fake-chat", max_retries=1, backoff_s=0.01) as policy:
        with pytest.raises(PolicyUnavailableError) as info:
            await policy.generate([_request()], SAMPLING)
    assert not isinstance(info.value, PolicyUnreachableError) and info.value.attempts == 2
    assert "last: ConnectError: [Errno -3] Temporary failure in name resolution; is the server up" in str(info.value)
    assert not MALFORMED.search(str(info.value))


async def test_a_refusal_after_the_server_answered_is_a_restart_and_retried(
    server: ChatServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with _policy(server, max_retries=1) as policy:
        await policy.generate([_request()], SAMPLING)
        await server.close()  # it stops listening, as a restarting server does for a moment
        port = server.base_url.split(":")[-1].split("/")[0]
        with (
            caplog.at_level(logging.WARNING, logger="hillclimb.trainers.policy"),
            pytest.raises(PolicyUnavailableError) as info,
        ):
            await policy.generate([_request()], SAMPLING)
    assert not isinstance(info.value, PolicyUnreachableError) and info.value.attempts == 2
    refused = f"connection refused: nothing listens at 127.0.0.1:{port}"
    assert str(info.value).endswith(f"failed 2 times; last: {refused}; is the server up and not overloaded?")
    (line,) = [r.getMessage() for r in caplog.records]
    assert f"failed ({refused}); retry 1/1" in line


async def test_a_wrong_key_is_refused_at_once_naming_the_variable(server: ChatServer) -> None:
    async with _policy(server, api_key="sk-wrong") as policy:
        with pytest.raises(PolicyRequestError, match=r"refused the API key: check the key in \$HC_CHAT_KEY") as info:
            await policy.check()
    assert (info.value.status, len(server.requests)) == (401, 1)
    assert "sk-wrong" not in str(info.value) and "Incorrect API key provided: <api key>)" in str(info.value)


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
