"""`ModelServer`: one policy engine behind an OpenAI-compatible HTTP API (`hillclimb model serve`).

    GET  /v1/models
    POST /v1/chat/completions ─► parse_request ─► chat template (+ tools) ─► prompt ids ─┐
    POST /v1/completions      ─► parse_request ─► prompt text or ids ───────────────────┤
                                       n requests (seed, seed+1, ...) ─► policy.generate ┘
                                       ◄─ Generation per choice: ids, log-probs, finish
         ◄─ choices (text, tool_calls, logprobs) + usage, and with `return_token_ids` vLLM's
            `prompt_token_ids` and each choice's `token_ids`

The engine batches concurrent requests on its own (`HFPolicy`'s micro-batcher), so every
request is simply awaited here. Token ids are the engine's exactly: a choice's `token_ids` are
what was sampled, its end-of-turn or stop token included, and its log-probs are one per id (the
tempered distribution's, as a learner recomputes them). The text leaves out that final stop
token. Stop strings are found in the text after generation (the engine stops on token ids
only): the text ends before the first one, the ids at the token that completed it.

Every refusal is OpenAI's error body with its status; an unexpected failure is a 500 with the
error's type, logged, and the server goes on serving.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from jinja2 import TemplateError

from hillclimb.config.rollout import SamplingParams
from orchestrator.serve_protocol import APIError, ChatRequest, CompletionRequest, parse_request
from orchestrator.serve_tools import parse_tool_calls, template_messages
from trainers.policy.base import GenerateRequest, Generation, Policy
from trainers.policy.errors import ContextOverflowError, PolicyRequestError
from trainers.tokenizer import Tokenizer

__all__ = ["ModelServer"]

log = logging.getLogger("hillclimb.serve")

_MAX_BODY_BYTES = 32 * 1024 * 1024
_TOKEN_PREFIX = "token_id:"


@dataclass(frozen=True, slots=True)
class _Sample:
    """One choice's outcome after stop strings: ids and log-probs as sampled, the text shown."""

    ids: list[int]
    logprobs: list[float]
    text: str
    finish: str


class ModelServer:
    """Serves `policy` as `served_name`. `start` it, then `close` it."""

    def __init__(
        self,
        policy: Policy,
        *,
        served_name: str,
        max_context: int,
        max_n: int,
        api_key: str | None = None,
    ) -> None:
        """`max_context`: prompt + completion limit in tokens; `max_n`: most choices a request may ask for;
        `api_key`: the bearer token every request must carry (None: no authentication)."""
        self._policy = policy
        self._tokenizer: Tokenizer = policy.tokenizer
        self.served_name = served_name
        self._max_context = max_context
        self._max_n = max_n
        self._api_key = api_key
        self._created = int(time.time())
        self._template = _chat_template(self._tokenizer)
        self._template_has_tools = self._template is not None and _renders_tools(self._template)
        self._app = web.Application(client_max_size=_MAX_BODY_BYTES, middlewares=[self._guard])
        self._app.router.add_get("/health", self._health)
        self._app.router.add_get("/v1/models", self._models)
        self._app.router.add_post("/v1/chat/completions", self._chat)
        self._app.router.add_post("/v1/completions", self._completions)
        self._runner: web.AppRunner | None = None

    @property
    def has_chat_template(self) -> bool:
        return self._template is not None

    async def start(self, host: str, port: int) -> str:
        """Listen on `host:port` (0: a free port); the base URL, up to `/v1`."""
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.create_server((host, port), family=family)
        self._runner = web.AppRunner(self._app, access_log=None, handle_signals=False, shutdown_timeout=5.0)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        bound = sock.getsockname()[1]
        return f"http://{f'[{host}]' if ':' in host else host}:{bound}/v1"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            if self._api_key is not None and request.path.startswith("/v1/"):
                self._authorize(request)
            return await handler(request)
        except APIError as e:
            return _json(e.body(), e.status)
        except web.HTTPException as e:  # no such route or method, a body over the limit
            return _json(APIError(e.status, f"{request.method} {request.path}: {e.reason}").body(), e.status)
        except Exception as e:
            log.exception("%s %s failed", request.method, request.path)
            return _json(APIError(500, f"internal error: {type(e).__name__}: {e}").body(), 500)

    def _authorize(self, request: web.Request) -> None:
        sent = request.headers.get("Authorization", "")
        expected = f"Bearer {self._api_key}"
        if not hmac.compare_digest(sent.encode(), expected.encode()):
            raise APIError(401, "missing or wrong API key (Authorization: Bearer ...)", code="invalid_api_key")

    async def _health(self, request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def _models(self, request: web.Request) -> web.Response:
        card = {
            "id": self.served_name,
            "object": "model",
            "created": self._created,
            "owned_by": "hillclimb",
            "max_model_len": self._max_context,
        }
        return _json({"object": "list", "data": [card]})

    async def _chat(self, request: web.Request) -> web.Response:
        req = parse_request(await request.read(), ChatRequest)
        self._check(req)
        prompt = self._chat_prompt(req)
        if req.limit is None and len(prompt) >= self._max_context:
            raise APIError(
                400,
                f"the prompt has {len(prompt)} tokens, which fills this model's context of {self._max_context} tokens",
                param="messages",
                code="context_length_exceeded",
            )
        limit = req.limit or self._max_context - len(prompt)
        param = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
        generations = await self._sample(prompt, req, limit, param)
        offered = {t.function.name for t in req.tools or ()} if req.tool_choice != "none" else set()
        choices, samples = [], [self._finish(g, req.stops) for g in generations]
        for i, sample in enumerate(samples):
            choice = {"index": i, **_chat_message(sample, offered, req.parallel_tool_calls)}
            choice["logprobs"] = {"content": self._chat_logprobs(sample)} if req.logprobs else None
            if req.return_token_ids:
                choice["token_ids"] = sample.ids
            choices.append(choice)
        body = self._envelope("chatcmpl", "chat.completion", prompt, samples, choices)
        if req.return_token_ids:
            body["prompt_token_ids"] = prompt
        return _json(body)

    async def _completions(self, request: web.Request) -> web.Response:
        req = parse_request(await request.read(), CompletionRequest)
        self._check(req)
        prompt = self._tokenizer.encode(req.prompt) if isinstance(req.prompt, str) else list(req.prompt)
        generations = await self._sample(prompt, req, req.limit, "max_tokens")
        choices, samples = [], [self._finish(g, req.stops) for g in generations]
        for i, sample in enumerate(samples):
            choice: dict[str, Any] = {"index": i, "text": sample.text, "finish_reason": sample.finish}
            choice["logprobs"] = None if req.logprobs is None else self._completion_logprobs(sample, req)
            if req.return_token_ids:
                choice |= {"prompt_token_ids": prompt, "token_ids": sample.ids}
            choices.append(choice)
        return _json(self._envelope("cmpl", "text_completion", prompt, samples, choices))

    def _check(self, req: ChatRequest | CompletionRequest) -> None:
        if req.model != self.served_name:
            raise APIError(
                404,
                f"model {req.model!r} does not exist here: this server serves {self.served_name!r}",
                param="model",
                code="model_not_found",
            )
        if req.n > self._max_n:
            raise APIError(400, f"n is {req.n}, more than this server's limit of {self._max_n}", param="n")

    def _chat_prompt(self, req: ChatRequest) -> list[int]:
        if self._template is None:
            raise APIError(
                400,
                f"model {self.served_name!r} has no chat template: use /v1/completions with a prompt",
                code="no_chat_template",
            )
        messages, tools = template_messages(req.messages, req.tools, self._template_has_tools)
        hf = self._tokenizer.hf  # type: ignore[attr-defined]  # only HFTokenizer has a template
        try:
            text = hf.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)
        except TemplateError as e:
            raise APIError(400, f"the chat template refused the messages: {e}", param="messages") from None
        return self._tokenizer.encode(text)

    async def _sample(
        self, prompt: list[int], req: ChatRequest | CompletionRequest, limit: int, param: str
    ) -> list[Generation]:
        sampling = SamplingParams(
            max_new_tokens=limit,
            temperature=req.temperature,
            top_p=req.top_p,
            stop_token_ids=tuple(req.stop_token_ids or ()),
        )
        seeds = [None if req.seed is None else req.seed + i for i in range(req.n)]
        requests = [GenerateRequest(prompt_ids=tuple(prompt), seed=seed) for seed in seeds]
        try:
            return await self._policy.generate(requests, sampling)
        except ContextOverflowError as e:
            raise APIError(
                400,
                f"this model's context is {e.max_context} tokens, but the prompt has {e.prompt_tokens} tokens and "
                f"{param} is {e.max_new_tokens} ({e.prompt_tokens + e.max_new_tokens} in all): shorten the prompt "
                f"or lower {param}",
                param=param,
                code="context_length_exceeded",
            ) from None
        except PolicyRequestError as e:
            raise APIError(400, str(e), param="prompt", code="invalid_prompt") from None

    def _finish(self, generation: Generation, stops: tuple[str, ...]) -> _Sample:
        ids, logprobs = list(generation.token_ids), list(generation.logprobs)
        stopped = generation.finish_reason == "stop"  # the last id is the EOS or a stop token id
        shown = ids[:-1] if stopped else ids
        text = self._tokenizer.decode(shown)
        found = [(text.find(s), s) for s in stops if s in text]
        if not found:
            return _Sample(ids, logprobs, text, "stop" if stopped else "length")
        at, stop = min(found)
        k = next(k for k in range(1, len(shown) + 1) if len(self._tokenizer.decode(shown[:k])) >= at + len(stop))
        return _Sample(ids[:k], logprobs[:k], text[:at], "stop")

    def _chat_logprobs(self, sample: _Sample) -> list[dict[str, Any]]:
        out = []
        for token_id, logprob in zip(sample.ids, sample.logprobs, strict=True):
            token = self._tokenizer.decode([token_id])
            out.append({"token": token, "logprob": logprob, "bytes": list(token.encode()), "top_logprobs": []})
        return out

    def _completion_logprobs(self, sample: _Sample, req: CompletionRequest) -> dict[str, Any]:
        texts = [self._tokenizer.decode([i]) for i in sample.ids]
        offsets, at = [], 0
        for text in texts:
            offsets.append(at)
            at += len(text)
        tokens = [f"{_TOKEN_PREFIX}{i}" for i in sample.ids] if req.return_tokens_as_token_ids else texts
        return {"tokens": tokens, "token_logprobs": sample.logprobs, "top_logprobs": None, "text_offset": offsets}

    def _envelope(
        self, prefix: str, kind: str, prompt: list[int], samples: list[_Sample], choices: list[dict[str, Any]]
    ) -> dict[str, Any]:
        completion_tokens = sum(len(s.ids) for s in samples)
        return {
            "id": f"{prefix}-{secrets.token_hex(12)}",
            "object": kind,
            "created": int(time.time()),
            "model": self.served_name,
            "choices": choices,
            "usage": {
                "prompt_tokens": len(prompt),
                "completion_tokens": completion_tokens,
                "total_tokens": len(prompt) + completion_tokens,
            },
        }


def _chat_message(sample: _Sample, offered: set[str], parallel: bool) -> dict[str, Any]:
    """The choice's `message` and `finish_reason`: tool calls where the text holds any."""
    content, calls = parse_tool_calls(sample.text, offered) if offered else (sample.text, [])
    if not calls:
        return {"message": {"role": "assistant", "content": sample.text}, "finish_reason": sample.finish}
    message = {"role": "assistant", "content": content, "tool_calls": calls if parallel else calls[:1]}
    return {"message": message, "finish_reason": "tool_calls"}


def _chat_template(tokenizer: Tokenizer) -> str | None:
    hf = getattr(tokenizer, "hf", None)
    return getattr(hf, "chat_template", None) or None


def _renders_tools(template: str) -> bool:
    """Whether the template reads `tools` at all (SmolLM2's does not)."""
    return "tools" in template


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, content_type="application/json")
