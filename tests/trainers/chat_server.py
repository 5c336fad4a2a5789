"""A loopback stand-in for an OpenAI-compatible chat API (`POST /v1/chat/completions`, `GET
/v1/models`) over real HTTP, with a scripted "model".

It speaks the chat-completions JSON (OpenAI's ChatCompletion: `choices[0].message.content`,
`finish_reason`, `usage`; errors as {"error": {"message", "type", "code"}}) and, when asked with
`return_token_ids`, vLLM's extension: top-level `prompt_token_ids`, per-choice `token_ids` and
`logprobs.content[i].logprob`. Its "tokenizer" is UTF-8 bytes shifted by `TOKEN_OFFSET`, so ids
it returns are never mistaken for the client's own byte transcript; its template is append-only
(`<|role|>content<|end|>`), unless `rewrite_history` drops earlier assistant turns from the prompt
as some reasoning-model templates do. Like vLLM it is stricter than needed nowhere, except that
an unknown request field is a 400 (a misspelt parameter must show up).

The model: `answer(messages)` — by default `toy_terminal_oracle`, which finds the task by the
first user message and plays its oracle, except on tasks listed in `fail_tasks` (to any other
prompt it says OK). An answer may be a `Call` instead of text: the reply then calls that tool
(`message.tool_calls`, `finish_reason: tool_calls`) if the request offered it, else writes the
call as text (`name {arguments}`). As
OpenAI's API does, it refuses (400) a conversation in which a tool call is not answered by a
`tool` message with its id before anything else is said, or a `tool` message answers no call. `faults` are
answered first, one per request: an error status with headers, or a delay before a normal reply.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from envs.builtin.toy_terminal.tasks import SUITE

FIELDS = {"model", "messages", "max_tokens", "temperature", "top_p", "seed", "n", "logprobs", "return_token_ids"}
FIELDS |= {"tools", "parallel_tool_calls"}
TOKEN_OFFSET = 1000
LOGPROB = -0.25
"""Every sampled token's reported log-prob (any fixed value the test can check)."""


@dataclass(frozen=True)
class Call:
    """A scripted reply that calls a tool."""

    name: str
    arguments: str
    """JSON text, as a model writes it (it may be malformed on purpose)."""


Answer = Callable[[list[dict[str, Any]]], str | Call]


@dataclass
class Fault:
    status: int | None = None
    """An error status to answer with; None: answer normally, after `delay_s`."""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


def toy_terminal_oracle(fail_tasks: set[str] = frozenset()) -> Answer:  # type: ignore[assignment]
    """Plays each toy_terminal task's oracle; on a task in `fail_tasks`, answers wrongly."""
    tasks = {t.prompt: t for split in ("train", "heldout") for t in SUITE.tasks(split)}

    def answer(messages: list[dict[str, str]]) -> str:
        prompt = next(m["content"] for m in messages if m["role"] == "user")
        task = tasks.get(prompt)
        if task is None:  # not a task: `hillclimb eval`'s check before it starts
            return "OK"
        turn = sum(1 for m in messages if m["role"] == "assistant")
        if task.id in fail_tasks:
            return "answer: no idea"
        return task.oracle[min(turn, len(task.oracle) - 1)]

    return answer


def render(messages: list[dict[str, Any]]) -> str:
    return "".join(f"<|{m['role']}|>{_said(m)}<|end|>" for m in messages) + "<|assistant|>"


def _said(message: dict[str, Any]) -> str:
    calls = "".join(
        f"<|call|>{c['function']['name']} {c['function']['arguments']}" for c in message.get("tool_calls", [])
    )
    return (message.get("content") or "") + calls


def tool_call_problem(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> str | None:
    """What OpenAI's API would refuse in this conversation's tool calls, or None."""
    offered = {t["function"]["name"] for t in tools}
    waiting: list[str] = []
    for message in messages:
        if message["role"] == "tool":
            if message.get("tool_call_id") not in waiting:
                return f"a 'tool' message answers no pending tool call: {message.get('tool_call_id')!r}"
            waiting.remove(message["tool_call_id"])
            continue
        if waiting:
            return f"tool calls {waiting} must be answered by 'tool' messages before a {message['role']!r} message"
        for call in message.get("tool_calls", []):
            if call["function"]["name"] not in offered:
                return f"tool {call['function']['name']!r} was not offered"
            waiting.append(call["id"])
    return None


def token_ids(text: str) -> list[int]:
    return [b + TOKEN_OFFSET for b in text.encode()]


class ChatServer:
    def __init__(
        self, answer: Answer | None = None, served_model: str = "fake-chat", api_key: str | None = None
    ) -> None:
        self.answer = answer or toy_terminal_oracle()
        self.served_model = served_model
        self.api_key = api_key
        self.faults: list[Fault] = []
        self.reply_delay_s = 0.0
        self.rewrite_history = False
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._ids = itertools.count()
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    async def start(self) -> str:
        """Listen on a free loopback port; returns the base URL (ending in /v1)."""
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        await web.SockSite(self._runner, sock).start()
        self.base_url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
        return self.base_url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _models(self, http: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": self.served_model, "object": "model"}]})

    async def _chat(self, http: web.Request) -> web.Response:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._serve(http)
        finally:
            self.in_flight -= 1

    async def _serve(self, http: web.Request) -> web.Response:
        body = await http.json()
        self.requests.append(body)
        self.headers.append(dict(http.headers))
        fault = self.faults.pop(0) if self.faults else Fault()
        if fault.status is not None:
            return _error(fault.status, f"scripted {fault.status}", "server_error", headers=fault.headers)
        await asyncio.sleep(fault.delay_s + self.reply_delay_s)
        if self.api_key is not None and http.headers.get("Authorization") != f"Bearer {self.api_key}":
            sent = http.headers.get("Authorization", "").removeprefix("Bearer ")  # echoed, as some servers do
            return _error(401, f"Incorrect API key provided: {sent}.", "invalid_request_error", code="invalid_api_key")
        unknown = sorted(set(body) - FIELDS)
        if unknown:
            return _error(400, f"Unrecognized request argument supplied: {unknown[0]}", "invalid_request_error")
        problem = tool_call_problem(body["messages"], body.get("tools", []))
        if problem is not None:
            return _error(400, problem, "invalid_request_error")
        if body.get("model") != self.served_model:
            message = f"The model `{body.get('model')}` does not exist or you do not have access to it."
            return _error(404, message, "invalid_request_error", code="model_not_found")
        return web.json_response(self._completion(body))

    def _completion(self, body: dict[str, Any]) -> dict[str, Any]:
        messages = body["messages"]
        answer = self.answer(messages)
        if isinstance(answer, Call) and answer.name not in {t["function"]["name"] for t in body.get("tools", [])}:
            answer = f"{answer.name} {answer.arguments}"  # offered no tools, a model writes the call as text
        if isinstance(answer, Call):
            call = {"id": f"call_{next(self._ids)}", "type": "function", "function": vars(answer)}
            message: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": [call]}
            reply, finish = _said(message), "tool_calls"
        else:
            reply = answer.encode()[: body.get("max_tokens", 1 << 30)].decode(errors="ignore")
            message, finish = {"role": "assistant", "content": reply}, "stop" if reply == answer else "length"
        choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": finish}
        completion_ids = token_ids(reply + "<|end|>" if finish != "length" else reply)
        shown = [m for m in messages if m["role"] != "assistant"] if self.rewrite_history else messages
        prompt_ids = token_ids(render(shown))
        data: dict[str, Any] = {
            "id": f"chatcmpl-{next(self._ids)}",
            "object": "chat.completion",
            "model": self.served_model,
            "choices": [choice],
            "usage": {
                "prompt_tokens": len(prompt_ids),
                "completion_tokens": len(completion_ids),
                "total_tokens": len(prompt_ids) + len(completion_ids),
            },
        }
        if body.get("return_token_ids"):
            data["prompt_token_ids"] = prompt_ids
            choice["token_ids"] = completion_ids
            if body.get("logprobs"):
                choice["logprobs"] = {"content": [{"token": str(i), "logprob": LOGPROB} for i in completion_ids]}
        return data


def _error(
    status: int, message: str, kind: str, *, code: str | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    error = {"message": message, "type": kind, "param": None, "code": code}
    return web.json_response({"error": error}, status=status, headers=headers)
