"""OpenAIPolicy against a real HTTP server on loopback that speaks vLLM's completions subset."""

from __future__ import annotations

import logging
import pickle
import socket
from collections.abc import AsyncIterator

import pytest
from completions_server import CompletionsServer

from hillclimb.config.rollout import SamplingParams
from trainers.models import TinyModelConfig, build_tiny_model
from trainers.policy.base import GenerateRequest, Policy
from trainers.policy.errors import (
    PolicyRequestError,
    PolicyResponseError,
    PolicyUnavailableError,
    PolicyUnreachableError,
    WeightsNotUpdatableError,
)
from trainers.policy.hf import HFPolicy
from trainers.policy.openai import OpenAIPolicy
from trainers.tokenizer import ByteTokenizer

TOKENIZER = ByteTokenizer()
NEWLINE = TOKENIZER.encode("\n")[0]
TINY = TinyModelConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, max_positions=256)
ENGINE = HFPolicy(build_tiny_model(TINY), TOKENIZER, threads=1)
PROMPTS = ["cat app.log\n$ ", "Question: which port?\n$ ", "l"]


@pytest.fixture
async def server() -> AsyncIterator[CompletionsServer]:
    server = CompletionsServer(ENGINE, served_model="tiny", api_key="k-123")
    server.base_url = await server.start()
    yield server
    await server.close()


def _client(server: CompletionsServer, **kwargs) -> OpenAIPolicy:
    options = {"api_key": "k-123", "backoff_s": 0.01, **kwargs}
    return OpenAIPolicy(server.base_url, "tiny", TOKENIZER, **options)


def _requests(seed0: int = 10) -> list[GenerateRequest]:
    return [GenerateRequest(prompt_ids=tuple(TOKENIZER.encode(p)), seed=seed0 + i) for i, p in enumerate(PROMPTS)]


@pytest.mark.parametrize(
    "sampling",
    [
        SamplingParams(max_new_tokens=20, temperature=0.8, top_p=0.9, stop_token_ids=tuple(range(3, 256, 23))),
        SamplingParams(max_new_tokens=12, temperature=0.0, stop_token_ids=(NEWLINE,)),
    ],
)
async def test_token_exact_round_trip(server: CompletionsServer, sampling: SamplingParams) -> None:
    requests = _requests()
    expected = ENGINE.generate_sync(requests, sampling)
    async with _client(server) as policy:
        assert isinstance(policy, Policy)
        got = await policy.generate(requests, sampling)
    assert got == expected  # ids, float log-probs (exact through JSON), finish reasons, version 0
    assert server.requests[0] == {
        "model": "tiny",
        "prompt": list(requests[0].prompt_ids),
        "max_tokens": sampling.max_new_tokens,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "logprobs": 1,
        "stop_token_ids": list(sampling.stop_token_ids),
        "return_tokens_as_token_ids": True,
        "seed": 10,
    }


async def test_seeds_reproduce_through_the_server(server: CompletionsServer) -> None:
    sampling = SamplingParams(max_new_tokens=16, temperature=1.0)
    async with _client(server) as policy:
        first, again, other = [await policy.generate(_requests(seed), sampling) for seed in (5, 5, 6)]
    # The same seed gives the same tokens. The log-probs agree to float rounding, not bit for bit:
    # requests join the engine's running batch as they arrive (continuous batching), and a row's
    # products depend on what shares its batch (vLLM's are not batch-invariant either).
    assert [g.token_ids for g in first] == [g.token_ids for g in again]
    for a, b in zip(first, again, strict=True):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)
    assert [g.token_ids for g in first] != [g.token_ids for g in other]


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
async def test_retryable_statuses_are_retried(
    server: CompletionsServer, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    server.script = [(status, {})]
    (request,) = _requests()[:1]
    with caplog.at_level(logging.WARNING, logger="hillclimb.trainers.policy"):
        async with _client(server) as policy:
            (generation,) = await policy.generate([request], SamplingParams(max_new_tokens=4, temperature=0.0))
    assert len(server.requests) == 2
    assert generation == ENGINE.generate_sync([request], SamplingParams(max_new_tokens=4, temperature=0.0))[0]
    assert [r.getMessage() for r in caplog.records] == [
        f"POST {server.base_url}/completions failed (HTTP {status}: scripted failure); retry 1/4 in 0.01 s"
    ]


async def test_retry_after_stretches_the_backoff(server: CompletionsServer, caplog: pytest.LogCaptureFixture) -> None:
    server.script = [(503, {"Retry-After": "0.2"})]
    with caplog.at_level(logging.WARNING, logger="hillclimb.trainers.policy"):
        async with _client(server) as policy:
            await policy.generate(_requests()[:1], SamplingParams(max_new_tokens=2))
    assert caplog.records[0].getMessage().endswith("retry 1/4 in 0.20 s")


async def test_retries_run_out_into_a_typed_error(server: CompletionsServer) -> None:
    server.script = [(503, {})] * 3
    async with _client(server, max_retries=2) as policy:
        with pytest.raises(PolicyUnavailableError, match="failed 3 times; last: HTTP 503") as info:
            await policy.generate(_requests()[:1], SamplingParams(max_new_tokens=2))
    assert (info.value.status, info.value.attempts, len(server.requests)) == (503, 3, 3)
    assert isinstance(info.value, ConnectionError)
    assert pickle.loads(pickle.dumps(info.value)).attempts == 3


async def test_a_refused_request_is_not_retried(server: CompletionsServer) -> None:
    out_of_vocab = GenerateRequest(prompt_ids=(65, 300), seed=0)
    async with _client(server) as policy:
        with pytest.raises(PolicyRequestError, match="HTTP 400: prompt token id 300 is outside") as info:
            await policy.generate([out_of_vocab], SamplingParams(max_new_tokens=2))
    assert (info.value.status, len(server.requests)) == (400, 1)


async def test_wrong_key_and_wrong_model_are_refused(server: CompletionsServer) -> None:
    sampling = SamplingParams(max_new_tokens=2)
    async with _client(server, api_key="wrong") as policy:
        with pytest.raises(PolicyRequestError, match="HTTP 401") as info:
            await policy.generate(_requests()[:1], sampling)
    assert info.value.status == 401
    async with OpenAIPolicy(server.base_url, "other", TOKENIZER, api_key="k-123") as policy:
        with pytest.raises(PolicyRequestError, match="HTTP 404: The model `other` does not exist"):
            await policy.generate(_requests()[:1], sampling)


async def test_a_port_nobody_listens_on_fails_at_once() -> None:
    """The completions policy shares the chat policy's client: the cases are in test_policy_chat."""
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens on it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with OpenAIPolicy(f"http://127.0.0.1:{port}/v1", "tiny", TOKENIZER, max_retries=1, backoff_s=0.01) as policy:
        with pytest.raises(PolicyUnreachableError, match=f"nothing listens at 127.0.0.1:{port};") as info:
            await policy.generate(_requests()[:1], SamplingParams(max_new_tokens=2))
    assert (info.value.status, info.value.attempts) == (None, 1)


async def test_a_server_without_token_ids_is_a_response_error(server: CompletionsServer) -> None:
    policy = _client(server)
    body = policy.request_body(_requests()[0], SamplingParams(max_new_tokens=3))
    del body["return_tokens_as_token_ids"]  # what a server that ignores the vLLM extension sends back
    data = await policy._post("/completions", body)
    with pytest.raises(PolicyResponseError, match="not of the form 'token_id:<id>'"):
        policy._generation(data)
    await policy.aclose()


async def test_weights_belong_to_the_server() -> None:
    policy = OpenAIPolicy("http://127.0.0.1:1/v1", "tiny", TOKENIZER, version=7)
    with pytest.raises(WeightsNotUpdatableError, match="managed by that server") as info:
        await policy.update_weights(8, {})
    assert isinstance(info.value, NotImplementedError)
    assert policy.version == 7
