"""`hillclimb model serve`'s request parsing and tool calls, without a model: requests refused
with the field named, the tool-call text form read back, and the whole HTTP path driven by the
official `openai` client against a `ModelServer` whose engine writes a scripted reply in
SmolLM2's real tokens (a `Policy` at the seam, so a tool call comes out deterministically)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from hillclimb.config.models import HFModelConfig
from hillclimb.config.rollout import SamplingParams
from orchestrator.model_server import ModelServer
from orchestrator.serve_protocol import APIError, ChatRequest, CompletionRequest, Message, Tool, parse_request
from orchestrator.serve_tools import parse_tool_calls, render_call, template_messages
from trainers.models.load import load_model_tokenizer
from trainers.policy.base import GenerateRequest, Generation
from trainers.tokenizer import ByteTokenizer, HFTokenizer

RUN = Tool.model_validate({"type": "function", "function": {"name": "run", "parameters": {"type": "object"}}})


def _refusal(body: dict[str, Any] | bytes, model: type = ChatRequest) -> APIError:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(APIError) as caught:
        parse_request(raw, model)
    assert caught.value.status == 400
    return caught.value


def test_every_problem_of_a_request_is_named_at_once() -> None:
    error = _refusal(
        {"model": "m", "prompt": "x", "max_token": 5, "temperature": "0.5", "logit_bias": {"7": 1}}, CompletionRequest
    )
    assert error.param == "logit_bias" and error.code == "unsupported_parameter"
    for said in (
        "logit_bias is not supported",
        "unknown field 'max_token'",
        "temperature: Input should be a valid number",
    ):
        assert said in error.message


def test_openai_fields_are_accepted_with_their_no_op_value_and_bookkeeping_always() -> None:
    body = {"model": "m", "prompt": "x", "stream": False, "presence_penalty": 0, "logit_bias": {}, "user": "u7"}
    assert parse_request(json.dumps(body).encode(), CompletionRequest).prompt == "x"
    assert _refusal({**body, "stream": True}, CompletionRequest).param == "stream"


@pytest.mark.parametrize(
    ("body", "param", "said"),
    [
        (b"{not json", None, "not valid JSON"),
        (b"[1, 2]", None, "must be a JSON object, not list"),
        ({"model": "m", "messages": []}, "messages", "at least 1 item"),
        ({"model": "m", "messages": [{"role": "user"}]}, "messages[0]", "a user message needs content"),
        ({"model": "m", "messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role", "Input should be"),
        ({"model": "m", "messages": [{"role": "tool", "content": "x"}]}, "messages[0]", "needs the tool_call_id"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": True}, "n", "valid integer"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "tool_choice": "required"}, "tool_choice", ""),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, "top_logprobs", ""),
    ],
)
def test_a_malformed_chat_request_is_refused_naming_the_field(body: Any, param: str | None, said: str) -> None:
    error = _refusal(body)
    assert error.param == param and said in error.message
    assert set(error.body()["error"]) == {"message", "type", "param", "code"}


def test_tool_calls_are_read_from_their_blocks_and_the_rest_stays_content() -> None:
    text = 'Let me look.\n<tool_call>\n{"name": "run", "arguments": {"cmd": "ls -l"}}\n</tool_call>'
    content, calls = parse_tool_calls(text, {"run"})
    assert content == "Let me look."
    assert [(c["type"], c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        ("function", "run", {"cmd": "ls -l"})
    ]
    # The end-of-turn token may cut the closing tag; Llama's `parameters` is read as arguments.
    assert parse_tool_calls('<tool_call>{"name": "run", "parameters": {"cmd": "pwd"}}', {"run"})[1][0]["function"] == {
        "name": "run",
        "arguments": '{"cmd": "pwd"}',
    }


@pytest.mark.parametrize(
    "text",
    [
        "no call here",
        "<tool_call>{not json}</tool_call>",
        '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>',  # not an offered function
        '<tool_call>["run"]</tool_call>',
    ],
)
def test_text_that_is_not_a_call_of_an_offered_function_stays_text(text: str) -> None:
    assert parse_tool_calls(text, {"run"}) == (text, [])


def test_a_template_without_tools_gets_them_as_text_and_calls_round_trip() -> None:
    messages = [
        Message(role="system", content="Be brief."),
        Message(role="user", content="List files."),
        Message.model_validate(
            {
                "role": "assistant",
                "tool_calls": [{"id": "c1", "function": {"name": "run", "arguments": '{"cmd": "ls"}'}}],
            }
        ),
        Message(role="tool", content="a.txt", tool_call_id="c1"),
    ]
    rendered, tools = template_messages(messages, [RUN], template_has_tools=False)
    assert tools is None
    assert rendered[0]["role"] == "system" and rendered[0]["content"].startswith("Be brief.\n\n# Tools")
    assert '{"name": "run", "parameters": {"type": "object"}}' in rendered[0]["content"]
    assert rendered[2] == {"role": "assistant", "content": render_call("run", {"cmd": "ls"})}
    assert rendered[3] == {"role": "user", "content": "<tool_response>\na.txt\n</tool_response>"}
    # What the prompt shows as a call is what the parser reads back.
    assert json.loads(parse_tool_calls(rendered[2]["content"], {"run"})[1][0]["function"]["arguments"]) == {"cmd": "ls"}
    structured, tools = template_messages(messages, [RUN], template_has_tools=True)
    assert tools == [RUN.model_dump(exclude_none=True)]
    assert structured[2]["tool_calls"][0]["function"] == {"name": "run", "arguments": {"cmd": "ls"}}


class ScriptedReply:
    """A `Policy` that writes `reply` in the tokenizer's real ids, then its end-of-turn token."""

    def __init__(self, tokenizer: HFTokenizer, reply: str) -> None:
        self.tokenizer = tokenizer
        self.reply = reply
        self.version = 0
        self.asked: list[tuple[GenerateRequest, SamplingParams]] = []

    async def generate(self, requests: list[GenerateRequest], sampling: SamplingParams) -> list[Generation]:
        self.asked += [(r, sampling) for r in requests]
        ids = (*self.tokenizer.encode(self.reply), self.tokenizer.eos_token_id)
        return [Generation(token_ids=ids, logprobs=(-0.5,) * len(ids), finish_reason="stop", version=0)] * len(requests)

    async def update_weights(self, version: int, weights: Mapping[str, Any]) -> None:
        raise NotImplementedError


REPLY = (
    'Checking.\n<tool_call>\n{"name": "run", "arguments": {"cmd": "ls"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "run", "arguments": {"cmd": "pwd"}}\n</tool_call> STOP here'
)


@pytest.fixture(scope="module")
def tokenizer() -> HFTokenizer:
    return load_model_tokenizer(HFModelConfig(name_or_path="smollm2-135m-instruct"))


@pytest.fixture
async def scripted(tokenizer: HFTokenizer) -> AsyncIterator[tuple[Any, ScriptedReply]]:
    from openai import AsyncOpenAI

    policy = ScriptedReply(tokenizer, REPLY)
    server = ModelServer(policy, served_name="scripted", max_context=8192, max_n=4)  # type: ignore[arg-type]
    url = await server.start("127.0.0.1", 0)
    async with AsyncOpenAI(base_url=url, api_key="unused", max_retries=0) as client:
        yield client, policy
    await server.close()


async def test_the_openai_client_gets_the_reply_s_tool_calls_and_its_exact_ids(scripted: Any) -> None:
    client, policy = scripted
    tools = [RUN.model_dump()]
    messages = [{"role": "user", "content": "List files."}]
    reply = await client.chat.completions.create(
        model="scripted", messages=messages, tools=tools, max_tokens=100, seed=7, extra_body={"return_token_ids": True}
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Checking.\n\n STOP here"
    assert [json.loads(c.function.arguments) for c in choice.message.tool_calls] == [{"cmd": "ls"}, {"cmd": "pwd"}]
    ids = choice.model_extra["token_ids"]
    assert ids == [*policy.tokenizer.encode(REPLY), policy.tokenizer.eos_token_id]
    assert reply.usage.completion_tokens == len(ids) and reply.usage.prompt_tokens == len(reply.prompt_token_ids)
    prompt = policy.tokenizer.decode(reply.prompt_token_ids)
    assert "<tools>\n" in prompt and prompt.endswith("List files.<|im_end|>\n<|im_start|>assistant\n")
    request, sampling = policy.asked[-1]
    assert list(request.prompt_ids) == reply.prompt_token_ids and request.seed == 7 and sampling.max_new_tokens == 100

    one = await client.chat.completions.create(
        model="scripted", messages=messages, tools=tools, parallel_tool_calls=False
    )
    assert len(one.choices[0].message.tool_calls) == 1

    # The call goes back with its result: both are in the next prompt, in the text form.
    call = choice.message.tool_calls[0]
    follow = messages + [choice.message.model_dump(include={"role", "content", "tool_calls"})]
    follow.append({"role": "tool", "tool_call_id": call.id, "content": "a.txt"})
    await client.chat.completions.create(model="scripted", messages=follow, tools=tools, max_tokens=4)
    prompt = policy.tokenizer.decode(policy.asked[-1][0].prompt_ids)
    assert render_call("run", {"cmd": "ls"}) in prompt and "<tool_response>\na.txt\n</tool_response>" in prompt


async def test_a_stop_string_ends_the_text_before_it_and_the_ids_at_the_token_that_completed_it(scripted: Any) -> None:
    client, policy = scripted
    reply = await client.completions.create(
        model="scripted", prompt="Go", max_tokens=200, stop=["STOP"], logprobs=1, extra_body={"return_token_ids": True}
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "stop" and choice.text == REPLY[: REPLY.index("STOP")]
    ids = choice.model_extra["token_ids"]
    assert policy.tokenizer.decode(ids).endswith("STOP") and not policy.tokenizer.decode(ids[:-1]).endswith("STOP")
    assert choice.logprobs.token_logprobs == [-0.5] * len(ids) and reply.usage.completion_tokens == len(ids)
    assert choice.model_extra["prompt_token_ids"] == policy.tokenizer.encode("Go")


async def test_a_model_without_a_chat_template_serves_completions_and_refuses_chat() -> None:
    from openai import AsyncOpenAI, BadRequestError

    policy = ScriptedReply(ByteTokenizer(), "plain")  # type: ignore[arg-type]
    server = ModelServer(policy, served_name="tiny", max_context=2048, max_n=2)  # type: ignore[arg-type]
    url = await server.start("127.0.0.1", 0)
    try:
        async with AsyncOpenAI(base_url=url, api_key="unused", max_retries=0) as client:
            reply = await client.completions.create(model="tiny", prompt="go")
            assert (reply.choices[0].text, reply.choices[0].finish_reason) == ("plain", "stop")
            with pytest.raises(BadRequestError) as refused:
                await client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])
            assert refused.value.code == "no_chat_template" and "use /v1/completions" in refused.value.message
    finally:
        await server.close()


def test_serve_names_an_unset_key_variable_before_loading_anything() -> None:
    command = [sys.executable, "-m", "orchestrator", "model", "serve", "tiny", "--api-key-env", "HC_NO_SUCH_KEY_VAR"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 2 and "'HC_NO_SUCH_KEY_VAR', but that environment variable is not set" in done.stderr
    assert "loading" not in done.stdout
