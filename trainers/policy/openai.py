"""`OpenAIPolicy`: any OpenAI-compatible completions server that takes token-id prompts (vLLM's
`vllm serve`, SGLang) as a policy, token-exact.

    GenerateRequest ─► POST {base_url}/completions  {"prompt": [ids...], "logprobs": 1,
                                                     "return_tokens_as_token_ids": true, ...}
                    ◄─ choices[0].logprobs.tokens = ["token_id:123", ...], token_logprobs, finish_reason

Token ids go out and come back as ids, never through text, so what the server sampled is
exactly what the trajectory records. Field names follow vLLM's `CompletionRequest`
(vllm/entrypoints/openai/completion/protocol.py): `prompt` accepts `list[int]`;
`stop_token_ids` and `return_tokens_as_token_ids` are vLLM extensions, the latter turning
every logprobs token into the string `token_id:{id}`. vLLM stops at EOS on its own and keeps
the stop token in the output, as `HFPolicy` does.

Log-probs: vLLM reports them before temperature by default. For T ≠ 1 start the server with
`--logprobs-mode processed_logprobs` so they are the tempered log-probs a learner's
importance ratio needs (vLLM then also renormalises them over the top-p nucleus).

Each request is its own HTTP call; the server batches concurrent calls itself. 429, 408,
5xx and transport failures are retried with exponential backoff (honouring Retry-After);
other 4xx answers raise `PolicyRequestError` at once. The server owns the weights, so this
policy serves evaluation and remote rollouts whose weights are pushed by other means.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any, NoReturn

import httpx

from trainers.policy.base import GenerateRequest, Generation, SamplingParams
from trainers.policy.errors import (
    PolicyRequestError,
    PolicyResponseError,
    PolicyUnavailableError,
    WeightsNotUpdatableError,
)
from trainers.tokenizer import Tokenizer

__all__ = ["RETRYABLE_STATUSES", "OpenAIPolicy"]

log = logging.getLogger("hillclimb.trainers.policy")

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_TOKEN_PREFIX = "token_id:"
_MAX_BODY_CHARS = 500


class OpenAIPolicy:
    """A remote completions server as a `Policy`. Use as `async with`, or call `aclose()`."""

    def __init__(
        self,
        base_url: str,
        model: str,
        tokenizer: Tokenizer,
        *,
        api_key: str | None = None,
        version: int = 0,
        timeout_s: float = 300.0,
        max_retries: int = 4,
        backoff_s: float = 0.5,
        max_backoff_s: float = 10.0,
        max_connections: int = 256,
    ) -> None:
        """`base_url` ends in `/v1`; `model` is the name the server serves; `version` is what
        every generation is stamped with (the server's weights do not change under this client)."""
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._tokenizer = tokenizer
        self._version = version
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._client_args: dict[str, Any] = {
            "base_url": self.base_url,
            "headers": {"Authorization": f"Bearer {api_key}"} if api_key else {},
            "timeout": httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
            "limits": httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        }
        self._client: httpx.AsyncClient | None = None

    @property
    def version(self) -> int:
        return self._version

    @property
    def tokenizer(self) -> Tokenizer:
        return self._tokenizer

    async def __aenter__(self) -> OpenAIPolicy:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def generate(self, requests: list[GenerateRequest], sampling: SamplingParams) -> list[Generation]:
        return list(await asyncio.gather(*(self._complete(request, sampling) for request in requests)))

    async def update_weights(self, version: int, weights: Mapping[str, Any]) -> None:
        raise WeightsNotUpdatableError(
            f"the weights behind {self.base_url} are managed by that server; OpenAIPolicy cannot load version "
            f"{version}. Use it for evaluation, or an in-process engine (hf, vllm) for training"
        )

    def request_body(self, request: GenerateRequest, sampling: SamplingParams) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": list(request.prompt_ids),
            "max_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "logprobs": 1,  # OpenAI semantics: the sampled token's log-prob plus the top-1 alternative
            "stop_token_ids": list(sampling.stop_token_ids),
            "return_tokens_as_token_ids": True,
        }
        if request.seed is not None:
            body["seed"] = request.seed
        return body

    async def _complete(self, request: GenerateRequest, sampling: SamplingParams) -> Generation:
        data = await self._post("/completions", self.request_body(request, sampling))
        return self._generation(data)

    async def _post(self, path: str, body: dict[str, Any]) -> Any:
        if self._client is None:
            self._client = httpx.AsyncClient(**self._client_args)
        url = f"{self.base_url}{path}"
        for attempt in range(self.max_retries + 1):
            status: int | None = None
            retry_after: str | None = None
            try:
                response = await self._client.post(path, json=body)
            except httpx.TransportError as e:  # connect, read/write timeouts, dropped connections
                failure: Exception = e
                detail = f"{type(e).__name__}: {e}"
            else:
                status = response.status_code
                if status == 200:
                    return _json(response)
                detail = f"HTTP {status}: {_error_message(response)}"
                if status not in RETRYABLE_STATUSES:
                    _raise_for_status(url, status, detail)
                failure = PolicyResponseError(detail)
                retry_after = response.headers.get("retry-after")
            if attempt == self.max_retries:
                raise PolicyUnavailableError(
                    f"POST {url} failed {attempt + 1} times; last: {detail}. Is the server up and not overloaded?",
                    status=status,
                    attempts=attempt + 1,
                ) from failure
            delay = self._backoff(attempt, retry_after)
            log.warning("POST %s failed (%s); retry %d/%d in %.2f s", url, detail, attempt + 1, self.max_retries, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _backoff(self, attempt: int, retry_after: str | None) -> float:
        delay = self.backoff_s * 2**attempt
        if retry_after is not None:
            # An HTTP-date Retry-After (rare from inference servers) falls back to our own schedule.
            with contextlib.suppress(ValueError):
                delay = max(delay, float(retry_after))
        return min(delay, self.max_backoff_s)

    def _generation(self, data: Any) -> Generation:
        try:
            choice = data["choices"][0]
            logprobs = choice["logprobs"]
            ids = tuple(_token_id(token) for token in logprobs["tokens"])
            values = tuple(float(v) for v in logprobs["token_logprobs"])
            finish = choice["finish_reason"]
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise PolicyResponseError(
                f"completion response lacks token ids or log-probs ({type(e).__name__}: {e}); does the server "
                f"support return_tokens_as_token_ids? Body: {str(data)[:_MAX_BODY_CHARS]}"
            ) from e
        if not ids or len(ids) != len(values):
            raise PolicyResponseError(f"completion returned {len(ids)} tokens and {len(values)} log-probs")
        if finish not in ("stop", "length"):
            raise PolicyResponseError(f"unexpected finish_reason {finish!r} (expected 'stop' or 'length')")
        return Generation(token_ids=ids, logprobs=values, finish_reason=finish, version=self._version)


def _token_id(token: str) -> int:
    if not token.startswith(_TOKEN_PREFIX):
        raise ValueError(f"token {token!r} is not of the form 'token_id:<id>'")
    return int(token[len(_TOKEN_PREFIX) :])


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as e:
        raise PolicyResponseError(f"completion response is not JSON: {response.text[:_MAX_BODY_CHARS]!r}") from e


def _error_message(response: httpx.Response) -> str:
    """The server's own error message (OpenAI: {"error": {"message"}}; older vLLM: {"message"})."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:_MAX_BODY_CHARS]
    if isinstance(body, dict):
        error = body.get("error")
        message = error.get("message") if isinstance(error, dict) else body.get("message")
        if isinstance(message, str):
            return message[:_MAX_BODY_CHARS]
    return str(body)[:_MAX_BODY_CHARS]


def _raise_for_status(url: str, status: int, detail: str) -> NoReturn:
    if 400 <= status < 500:
        raise PolicyRequestError(f"POST {url} was refused: {detail}", status=status)
    raise PolicyResponseError(f"POST {url} answered {detail}", status=status)
