"""`ChatPolicy`: any OpenAI-compatible chat API (a hosted model, `vllm serve`, a local server)
as a policy, for evaluation — and for training only where the server returns its token ids.

    GenerateRequest.messages ─► POST {base_url}/chat/completions {"model", "messages", "max_tokens", ...}
    GenerateRequest.tools    ─►   + "tools" (the environment's MCP tools), one call a turn
                             ◄─ choices[0].message.content                         (any server)
                                + tool_calls[0] → Generation.tool_call              (a tool called)
                                + prompt_token_ids, choices[0].token_ids, logprobs (vLLM, return_token_ids)

The server applies its own chat template, so this policy works in text: the episode goes out
as messages (rendered by `orchestrator.render.MessagesRenderer`), the reply comes back as text,
and its `token_ids` are that text's UTF-8 bytes (its tokenizer is a `ByteTokenizer`), which
makes the episode's transcript an exact record of the text. The model's own ids are another
matter: only the server knows them. With `return_token_ids` the server's prompt and completion
ids and log-probs ride along as `Generation.server_tokens`, and the rollout keeps those
(`orchestrator.server_tokens`); without them the trajectory is marked untrainable — never
re-tokenized here.

At most `max_concurrency` requests are in flight from one policy (a hosted API's rate limit is
per key); retries, backoff and Retry-After come from `RetryingClient`. A refused key (401, 403)
or an unknown model (404) is not retried: it raises `PolicyRequestError` naming the fix.
"""

from __future__ import annotations

from typing import Any

from hillclimb.config.rollout import SamplingParams
from trainers.policy.base import GenerateRequest, Generation, ServerTokens, ToolCall
from trainers.policy.errors import PolicyRequestError, PolicyResponseError
from trainers.policy.http_retry import MAX_BODY_CHARS
from trainers.policy.remote import RemotePolicy
from trainers.tokenizer import ByteTokenizer

__all__ = ["ChatPolicy"]

_PATH = "/chat/completions"


class ChatPolicy(RemotePolicy):
    """A chat-completions server as a `Policy`. Use as `async with`, or call `aclose()`."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        api_key_env: str | None = None,
        return_token_ids: bool = False,
        max_concurrency: int = 8,
        version: int = 0,
        timeout_s: float = 120.0,
        max_retries: int = 4,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
    ) -> None:
        """`api_key_env` only names where the key came from, for error messages."""
        super().__init__(
            base_url,
            model,
            ByteTokenizer(),
            api_key=api_key,
            version=version,
            timeout_s=timeout_s,
            max_retries=max_retries,
            backoff_s=backoff_s,
            max_backoff_s=max_backoff_s,
            max_connections=max_concurrency,  # the limit: further requests queue for a connection
        )
        self.return_token_ids = return_token_ids
        self._key_source = f"${api_key_env}" if api_key_env else "policy.api_key_env (no key was sent)"

    async def check(self) -> None:
        """One tiny request, so a wrong key, model or URL stops a run before any sandbox starts."""
        ping = GenerateRequest(prompt_ids=(), messages=({"role": "user", "content": "Reply with OK."},))
        await self._generate_one(ping, SamplingParams(max_new_tokens=1, temperature=0.0))

    def request_body(self, request: GenerateRequest, sampling: SamplingParams) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [dict(m) for m in request.messages],
            "max_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
        }
        if request.seed is not None:
            body["seed"] = request.seed
        if request.tools:  # an environment takes one action a turn: one call at a time
            body |= {"tools": list(request.tools), "parallel_tool_calls": False}
        if self.return_token_ids:  # vLLM extensions: the ids, and each sampled token's log-prob
            body |= {"return_token_ids": True, "logprobs": True}
        return body

    async def _generate_one(self, request: GenerateRequest, sampling: SamplingParams) -> Generation:
        if not request.messages:
            raise PolicyRequestError(
                "the chat policy needs the episode as chat messages; use rollout.renderer=messages", status=None
            )
        try:
            data = await self._http.post(_PATH, self.request_body(request, sampling))
        except PolicyRequestError as e:
            raise self._explained(e) from e
        return self._generation(data)

    def _explained(self, error: PolicyRequestError) -> PolicyRequestError:
        if error.status in (401, 403):
            hint = f"the server refused the API key: check the key in {self._key_source}"
        elif error.status == 404:
            hint = f"model {self.model!r} not found: GET {self.base_url}/models lists what the server serves"
        else:
            return error
        return PolicyRequestError(f"{hint} ({error})", status=error.status)

    def _generation(self, data: Any) -> Generation:
        try:
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
            finish = "length" if choice["finish_reason"] == "length" else "stop"
            call = _first_tool_call(choice["message"].get("tool_calls"))
        except (KeyError, IndexError, TypeError, AttributeError, ValueError) as e:  # ValueError: a bad tool call
            raise PolicyResponseError(
                f"chat response lacks choices[0].message ({type(e).__name__}: {e}); body: {str(data)[:MAX_BODY_CHARS]}"
            ) from e
        ids = tuple(self._tokenizer.encode(text))
        return Generation(
            token_ids=ids,
            logprobs=(0.0,) * len(ids),
            finish_reason=finish,
            version=self._version,
            server_tokens=self._server_tokens(data, choice) if self.return_token_ids else None,
            tool_call=call,
            usage=_usage(data),
        )

    def _server_tokens(self, data: Any, choice: Any) -> ServerTokens:
        try:
            prompt_ids = tuple(int(i) for i in data["prompt_token_ids"])
            ids = tuple(int(i) for i in choice["token_ids"])
            logprobs = tuple(float(entry["logprob"]) for entry in choice["logprobs"]["content"])
        except (KeyError, TypeError, ValueError) as e:
            raise PolicyResponseError(
                f"policy.return_token_ids is set, but the reply lacks {e} (prompt_token_ids, choices[0].token_ids, "
                "choices[0].logprobs.content): use a server that returns token ids (vLLM's return_token_ids), or "
                "set policy.return_token_ids=false (its episodes are then not trainable)"
            ) from e
        if len(ids) != len(logprobs):
            raise PolicyResponseError(f"chat reply has {len(ids)} token ids but {len(logprobs)} log-probs")
        return ServerTokens(prompt_ids=prompt_ids, ids=ids, logprobs=logprobs)


def _first_tool_call(calls: Any) -> ToolCall | None:
    """The reply's first tool call (requests ask for one at a time; a server that sends more
    gets the first played, as an environment takes one action a turn)."""
    if not calls:
        return None
    function = calls[0]["function"]
    return ToolCall(id=calls[0]["id"], name=function["name"], arguments=function.get("arguments") or "")


def _usage(data: Any) -> dict[str, int] | None:
    """The reply's `usage` token counts, if the server sent them as numbers."""
    usage = data.get("usage") if isinstance(data, dict) else None
    if not isinstance(usage, dict):
        return None
    counts = {k: usage[k] for k in ("prompt_tokens", "completion_tokens") if isinstance(usage.get(k), int)}
    return counts or None
