"""The policy contract. Every engine — scripted, Hugging Face, OpenAI-compatible, vLLM —
takes token ids in and gives token ids plus their sampling log-probs out, so the rollout
side never re-tokenizes what was sampled.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from hillclimb.config.rollout import SamplingParams
from trainers.tokenizer import Tokenizer


@dataclass(frozen=True, slots=True)
class EpisodeInfo:
    """Where a request comes from. LLM engines ignore it; the scripted oracle needs it."""

    env: str
    task_id: str
    turn: int
    seed: int = 0


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    """One prompt to continue.

    Plain data rather than a validated model: the platform builds one per turn from its own
    transcript, and checking every prompt id cost O(context) a turn (~70 µs at 8k tokens).
    """

    prompt_ids: tuple[int, ...]
    episode: EpisodeInfo | None = None
    seed: int | None = None
    """Per-request sampling seed, so a run's rollouts can be repeated."""
    messages: tuple[dict[str, Any], ...] = ()
    """The episode so far as chat messages (`role`, `content`; `tool_calls`, `tool_call_id`), for
    engines behind a chat API that apply the chat template themselves (`chat`); token-id engines
    ignore it."""
    tools: tuple[dict[str, Any], ...] = ()
    """Tools offered to a chat model (OpenAI function definitions: the environment's MCP tools);
    token-id engines ignore them."""


class ToolCall(BaseModel):
    """A chat model's call of a tool it was offered (OpenAI's `message.tool_calls[i]`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    name: str
    arguments: str
    """As the model wrote them: JSON text, unchecked (a malformed one is the model's mistake,
    shown to it by the task suite's parser)."""


class ServerTokens(BaseModel):
    """A chat server's own token ids for one turn (vLLM's `return_token_ids`): the prompt as it
    rendered the conversation, and the completion it sampled with its log-probs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt_ids: tuple[int, ...]
    ids: tuple[int, ...]
    logprobs: tuple[float, ...]


class Generation(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    """Log-prob of each sampled token under the sampling distribution (temperature applied)."""
    finish_reason: Literal["stop", "length"]
    version: int
    """Policy version of the weights that sampled it."""
    server_tokens: ServerTokens | None = None
    """Set by engines behind a chat API whose `token_ids` are the reply's text (UTF-8 bytes),
    when the server also returned its own token ids."""
    tool_call: ToolCall | None = None
    """The reply called a tool instead of (or besides) writing text: chat engines only."""
    usage: dict[str, int] | None = None
    """Tokens a chat API reported for this reply (`prompt_tokens`, `completion_tokens`): what it bills."""


@runtime_checkable
class Policy(Protocol):
    @property
    def version(self) -> int: ...

    @property
    def tokenizer(self) -> Tokenizer: ...

    async def generate(self, requests: list[GenerateRequest], sampling: SamplingParams) -> list[Generation]:
        """One generation per request, in order."""
        ...

    async def update_weights(self, version: int, weights: Mapping[str, Any]) -> None:
        """Load new weights (a state dict); later generations carry `version`."""
        ...


@runtime_checkable
class BucketedWeights(Protocol):
    """An engine that takes new weights in buckets, each loaded as it arrives, so neither side ever
    holds a second full copy (`orchestrator.weight_sync` publishes to these)."""

    @property
    def dtype(self) -> Any:
        """The torch dtype its weights are in, which a publish casts to; None: whatever comes."""
        ...

    async def update_weights_in_buckets(self, version: int, buckets: AsyncIterator[Mapping[str, Any]]) -> None:
        """Load every bucket of one update (later generations carry `version`); no generation
        runs on half-loaded weights."""
        ...


async def one_bucket(weights: Mapping[str, Any]) -> AsyncIterator[Mapping[str, Any]]:
    """A whole state dict as the single bucket of an update."""
    yield weights
