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

from typing import Any

from hillclimb.config.rollout import SamplingParams
from trainers.policy.base import GenerateRequest, Generation
from trainers.policy.errors import PolicyResponseError
from trainers.policy.http_retry import MAX_BODY_CHARS, RETRYABLE_STATUSES
from trainers.policy.remote import RemotePolicy
from trainers.tokenizer import Tokenizer

__all__ = ["RETRYABLE_STATUSES", "OpenAIPolicy"]

_TOKEN_PREFIX = "token_id:"


class OpenAIPolicy(RemotePolicy):
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
        super().__init__(
            base_url,
            model,
            tokenizer,
            api_key=api_key,
            version=version,
            timeout_s=timeout_s,
            max_retries=max_retries,
            backoff_s=backoff_s,
            max_backoff_s=max_backoff_s,
            max_connections=max_connections,
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

    async def _generate_one(self, request: GenerateRequest, sampling: SamplingParams) -> Generation:
        data = await self._post("/completions", self.request_body(request, sampling))
        return self._generation(data)

    async def _post(self, path: str, body: dict[str, Any]) -> Any:
        return await self._http.post(path, body)

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
                f"support return_tokens_as_token_ids? Body: {str(data)[:MAX_BODY_CHARS]}"
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
