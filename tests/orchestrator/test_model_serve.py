"""`hillclimb model serve` as a user runs it: the real CLI in a subprocess serving SmolLM2-135M-Instruct
(one server for the whole file), asked by the official `openai` client, by the project's own
`ChatPolicy` with token ids, by raw bad requests, and by `hillclimb eval`; it stops on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hillclimb.config.models import HFModelConfig
from hillclimb.config.rollout import SamplingParams
from orchestrator.server_tokens import stitch
from trainers.models.load import load_model_tokenizer
from trainers.policy.base import GenerateRequest
from trainers.policy.chat import ChatPolicy

REPO = Path(__file__).parents[2]
NAME = "smollm2-135m-instruct"  # served under the name it was asked for
KEY_ENV, KEY = "HC_SERVE_TEST_KEY", "sk-serve-test-5e1"
ENV = {**os.environ, KEY_ENV: KEY, "COLUMNS": "200"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL of one `model serve` for every test here; on teardown, SIGTERM stops it cleanly."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    command = [sys.executable, "-m", "orchestrator", "model", "serve", NAME, "--port", "0"]
    command += ["--max-batch", "4", "--api-key-env", KEY_ENV]
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=REPO, env=ENV, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not (found := re.search(r"at (http://127\.0\.0\.1:\d+/v1)", log.read_text())):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield found.group(1)
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
    assert code == 0 and log.read_text().rstrip().endswith("stopped"), log.read_text()[-2000:]


@pytest.fixture(scope="module")
def client(server: str) -> Any:
    from openai import OpenAI

    with OpenAI(base_url=server, api_key=KEY, max_retries=0) as client:
        yield client


@pytest.fixture(scope="module")
def hf_tokenizer() -> Any:
    return load_model_tokenizer(HFModelConfig(name_or_path=NAME)).hf


MESSAGES = [{"role": "user", "content": "Name a colour."}]
LONG = {"role": "user", "content": "hi " * 8200}


def test_models_lists_the_served_name(client: Any) -> None:
    assert [(m.id, m.object) for m in client.models.list().data] == [(NAME, "model")]


def test_a_chat_reply_carries_the_template_s_prompt_ids_and_its_own_ids_and_log_probs(
    client: Any, hf_tokenizer: Any
) -> None:
    reply = client.chat.completions.create(
        model=NAME, messages=MESSAGES, max_tokens=6, temperature=0, logprobs=True, extra_body={"return_token_ids": True}
    )
    choice = reply.choices[0]
    ids = choice.model_extra["token_ids"]
    rendered = hf_tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert reply.prompt_token_ids == hf_tokenizer.encode(rendered, add_special_tokens=False)
    shown = ids[:-1] if choice.finish_reason == "stop" else ids  # the end-of-turn token is not text
    assert hf_tokenizer.decode(shown) == choice.message.content and 1 <= len(ids) <= 6
    assert len(choice.logprobs.content) == len(ids) and all(t.logprob <= 0 for t in choice.logprobs.content)
    assert reply.usage.prompt_tokens == len(reply.prompt_token_ids) and reply.usage.completion_tokens == len(ids)


def test_n_choices_are_seeded_one_by_one_and_reproducible(client: Any) -> None:
    ask = {"model": NAME, "messages": MESSAGES, "max_tokens": 5, "temperature": 1.0, "seed": 11}
    ask["extra_body"] = {"return_token_ids": True}
    three = client.chat.completions.create(n=3, **ask)
    again = client.chat.completions.create(n=3, **ask)
    ids = [c.model_extra["token_ids"] for c in three.choices]
    assert [c.index for c in three.choices] == [0, 1, 2]
    assert ids == [c.model_extra["token_ids"] for c in again.choices]
    alone = client.chat.completions.create(n=1, **{**ask, "seed": 12})  # choice i samples with seed + i
    assert alone.choices[0].model_extra["token_ids"] == ids[1]
    assert three.usage.completion_tokens == sum(map(len, ids))


def test_chat_with_tools_shows_them_to_the_model_and_answers_in_openai_s_shape(client: Any, hf_tokenizer: Any) -> None:
    tool = {"type": "function", "function": {"name": "run", "description": "Run a shell command", "parameters": {}}}
    reply = client.chat.completions.create(
        model=NAME, messages=MESSAGES, tools=[tool], max_tokens=8, temperature=0, extra_body={"return_token_ids": True}
    )
    assert "<tools>\n" in hf_tokenizer.decode(reply.prompt_token_ids)
    choice = reply.choices[0]
    if choice.message.tool_calls:  # the weak model rarely calls; either answer has OpenAI's shape
        assert choice.finish_reason == "tool_calls" and choice.message.tool_calls[0].function.name == "run"
    else:
        assert choice.finish_reason in ("stop", "length") and isinstance(choice.message.content, str)


def test_completions_from_text_and_from_ids_agree_and_return_ids_as_tokens(client: Any, hf_tokenizer: Any) -> None:
    ask = {"model": NAME, "max_tokens": 4, "temperature": 0, "logprobs": 1}
    ask["extra_body"] = {"return_token_ids": True, "return_tokens_as_token_ids": True}
    by_text = client.completions.create(prompt="The capital of France is", **ask).choices[0]
    prompt_ids = hf_tokenizer.encode("The capital of France is", add_special_tokens=False)
    by_ids = client.completions.create(prompt=prompt_ids, **ask).choices[0]
    assert by_text.model_extra["prompt_token_ids"] == prompt_ids == by_ids.model_extra["prompt_token_ids"]
    assert by_text.text == by_ids.text == hf_tokenizer.decode(by_text.model_extra["token_ids"])
    assert by_text.logprobs.tokens == [f"token_id:{i}" for i in by_text.model_extra["token_ids"]]


async def test_chat_policy_episodes_through_the_server_chain_into_exact_token_ids(
    server: str, hf_tokenizer: Any
) -> None:
    greedy = SamplingParams(max_new_tokens=6, temperature=0.0)
    async with ChatPolicy(server, NAME, api_key=KEY, return_token_ids=True, max_retries=0) as policy:
        messages: list[dict[str, Any]] = [{"role": "user", "content": "Say one word."}]
        turns = []
        for said in ("Another one.", None):
            [generation] = await policy.generate([GenerateRequest(prompt_ids=(), messages=tuple(messages))], greedy)
            tokens = generation.server_tokens
            assert tokens is not None and len(tokens.ids) == len(tokens.logprobs)
            text = policy.tokenizer.decode(generation.token_ids)  # the reply's text, as the client holds it
            shown = tokens.ids[:-1] if generation.finish_reason == "stop" else tokens.ids
            assert hf_tokenizer.decode(list(shown)) == text
            turns.append(tokens)
            messages += [{"role": "assistant", "content": text}, {"role": "user", "content": said}]
    transcript = stitch(turns)
    assert not isinstance(transcript, str), transcript
    assert transcript.ids[: len(turns[1].prompt_ids)] == list(turns[1].prompt_ids)


BAD: list[tuple[str, str, Any, int, str | None, str]] = [
    ("POST", "/chat/completions", b"{oops", 400, None, "not valid JSON"),
    ("POST", "/chat/completions", {"model": NAME, "messages": MESSAGES, "temprature": 0}, 400, "temprature", "unknown"),
    ("POST", "/chat/completions", {"model": NAME, "messages": "hi"}, 400, "messages", "valid list"),
    ("POST", "/chat/completions", {"model": "gpt-9", "messages": MESSAGES}, 404, "model", "'gpt-9' does not exist"),
    ("POST", "/chat/completions", {"model": NAME, "messages": MESSAGES, "n": 5}, 400, "n", "limit of 4"),
    ("POST", "/completions", {"model": NAME, "prompt": "hi", "max_tokens": 8192}, 400, "max_tokens", "8192 tokens"),
    ("POST", "/completions", {"model": NAME, "prompt": [49152]}, 400, "prompt", "outside the model's vocabulary"),
    ("POST", "/chat/completions", {"model": NAME, "messages": [LONG]}, 400, "messages", "fills this model's context"),
    ("POST", "/completions", {"model": NAME, "prompt": "hi", "stream": True}, 400, "stream", "not supported"),
    ("GET", "/chat/completions", None, 405, None, "Method Not Allowed"),
    ("GET", "/nowhere", None, 404, None, "Not Found"),
]


def test_bad_requests_get_openai_s_error_shape_and_the_server_lives_on(server: str, client: Any) -> None:
    with httpx.Client(base_url=server, headers={"Authorization": f"Bearer {KEY}"}) as http:
        for method, path, body, status, param, said in BAD:
            content = body if isinstance(body, bytes) else None
            answer = http.request(method, server + path, content=content, json=None if content else body)
            error = answer.json()["error"]
            assert (answer.status_code, error["param"]) == (status, param), (path, body, error)
            assert said in error["message"] and set(error) == {"message", "type", "param", "code"}
        overflow = http.post("/completions", json={"model": NAME, "prompt": "hi", "max_tokens": 8192}).json()
        assert "prompt has 1 tokens and max_tokens is 8192" in overflow["error"]["message"]
        refused = httpx.get(server + "/models", headers={"Authorization": "Bearer sk-wrong"})
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    reply = client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=2)
    assert reply.choices[0].message.content is not None


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.root
async def test_hillclimb_eval_runs_against_the_server_and_prints_pass_at_k(server: str, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "orchestrator", "eval", "toy_terminal", "-m", NAME, "--base-url", server]
    command += ["-n", "5", "-r", "1", "--api-key-env", KEY_ENV, "--set", f"run.dir={tmp_path}"]
    command += ["--set", "rollout.episode.max_turns=2", "--set", "rollout.episode.sampling.max_new_tokens=12"]
    process = await asyncio.create_subprocess_exec(
        *command, cwd=REPO, env=ENV, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=280)
    out = stdout.decode()
    assert process.returncode == 0, (out + stderr.decode())[-3000:]
    assert re.search(r"│ train\s+│\s+5\s+│\s+5\s+│", out) and re.search(r"│ heldout\s+│\s+5\s+│\s+5\s+│", out), out
    assert "pass@1" in out and "episodes.jsonl" in out
