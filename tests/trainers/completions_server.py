"""A loopback stand-in for vLLM's OpenAI-compatible server: the `POST /v1/completions` subset that
`OpenAIPolicy` speaks, served over real HTTP and backed by a real `HFPolicy`.

It follows vLLM's `CompletionRequest` / `CompletionResponse` (vllm/entrypoints/openai/completion/
protocol.py) for the fields it implements and is stricter than vLLM elsewhere: an unknown field
is a 400 here (vLLM would log and ignore it, hiding a misspelt parameter). Without
`return_tokens_as_token_ids` the logprobs tokens are text, as vLLM sends them. `script` makes it
answer the next requests with given error statuses first, and `requests` records every body.
"""

from __future__ import annotations

import itertools
import socket
import time
from typing import Any

from aiohttp import web

from hillclimb.config.rollout import SamplingParams
from trainers.policy.base import GenerateRequest
from trainers.policy.errors import PolicyRequestError
from trainers.policy.hf import HFPolicy

FIELDS = {
    "model",
    "prompt",
    "max_tokens",
    "temperature",
    "top_p",
    "seed",
    "logprobs",
    "stop_token_ids",
    "return_tokens_as_token_ids",
}


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.param = param
        self.status = status


class CompletionsServer:
    def __init__(self, policy: HFPolicy, served_model: str = "tiny", api_key: str | None = None) -> None:
        self.policy = policy
        self.served_model = served_model
        self.api_key = api_key
        self.requests: list[dict[str, Any]] = []
        self.script: list[tuple[int, dict[str, str]]] = []
        """(status, headers) answered, in order, before any request is served."""
        self._ids = itertools.count()
        self._runner: web.AppRunner | None = None

    async def start(self) -> str:
        """Listen on a free loopback port; returns the base URL (ending in /v1)."""
        app = web.Application()
        app.router.add_post("/v1/completions", self._complete)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        await web.SockSite(self._runner, sock).start()
        return f"http://127.0.0.1:{sock.getsockname()[1]}/v1"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _complete(self, http: web.Request) -> web.Response:
        try:
            body = await http.json()
        except ValueError:
            return _error(BadRequest("request body is not JSON"))
        self.requests.append(body)
        if self.script:
            status, headers = self.script.pop(0)
            return web.json_response(
                {"error": {"message": "scripted failure", "code": status}}, status=status, headers=headers
            )
        try:
            self._authorize(http)
            request, sampling = self._parse(body)
            (generation,) = await self.policy.generate([request], sampling)
        except BadRequest as e:
            return _error(e)
        except PolicyRequestError as e:  # vLLM answers an over-long or invalid prompt with a 400 too
            return _error(BadRequest(str(e), "prompt"))
        return web.json_response(self._response(body, request, sampling, generation))

    def _authorize(self, http: web.Request) -> None:
        if self.api_key is not None and http.headers.get("Authorization") != f"Bearer {self.api_key}":
            raise BadRequest("Unauthorized", status=401)

    def _parse(self, body: dict[str, Any]) -> tuple[GenerateRequest, SamplingParams]:
        unknown = sorted(set(body) - FIELDS)
        if unknown:
            raise BadRequest(f"unsupported fields {unknown}", unknown[0])
        if body.get("model") != self.served_model:
            raise BadRequest(f"The model `{body.get('model')}` does not exist.", "model", status=404)
        prompt = body.get("prompt")
        if not isinstance(prompt, list) or not prompt or not all(isinstance(t, int) and t >= 0 for t in prompt):
            raise BadRequest("prompt must be a non-empty list of token ids", "prompt")
        logprobs = body.get("logprobs")
        if logprobs is not None and not (isinstance(logprobs, int) and 0 <= logprobs <= 20):
            raise BadRequest("logprobs must be an integer in [0, 20]", "logprobs")
        try:
            sampling = SamplingParams(
                max_new_tokens=body.get("max_tokens", 16),
                temperature=body.get("temperature", 1.0),
                top_p=body.get("top_p", 1.0),
                stop_token_ids=tuple(body.get("stop_token_ids") or ()),
            )
            request = GenerateRequest(prompt_ids=tuple(prompt), seed=body.get("seed"))
        except ValueError as e:
            raise BadRequest(str(e)) from e
        return request, sampling

    def _response(self, body: dict[str, Any], request: GenerateRequest, sampling: SamplingParams, generation) -> dict:
        tokenizer = self.policy.tokenizer
        ids = list(generation.token_ids)
        stop_reason = ids[-1] if generation.finish_reason == "stop" and ids[-1] in sampling.stop_token_ids else None
        choice: dict[str, Any] = {
            "index": 0,
            "text": tokenizer.decode(ids),
            "logprobs": None,
            "finish_reason": generation.finish_reason,
            "stop_reason": stop_reason,
        }
        if body.get("logprobs") is not None:
            as_ids = bool(body.get("return_tokens_as_token_ids"))
            tokens = [f"token_id:{t}" if as_ids else tokenizer.decode([t]) for t in ids]
            offsets = list(itertools.accumulate((len(tokenizer.decode([t])) for t in ids[:-1]), initial=0))
            choice["logprobs"] = {
                "text_offset": offsets,
                "token_logprobs": list(generation.logprobs),
                "tokens": tokens,
                "top_logprobs": [{token: lp} for token, lp in zip(tokens, generation.logprobs, strict=True)],
            }
        n_prompt = len(request.prompt_ids)
        return {
            "id": f"cmpl-{next(self._ids)}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.served_model,
            "choices": [choice],
            "usage": {"prompt_tokens": n_prompt, "completion_tokens": len(ids), "total_tokens": n_prompt + len(ids)},
        }


def _error(e: BadRequest) -> web.Response:
    body = {"error": {"message": str(e), "type": "BadRequestError", "param": e.param, "code": e.status}}
    return web.json_response(body, status=e.status)
