"""The run config's `rollout` section: how episodes are played (group size, concurrency, renderer)
and each episode's limits and sampling (`EpisodeConfig`, `SamplingParams`, which the policy
engines take per request too)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_SKILL_CHARS = 65536
"""What `rollout.skill` holds at most: a skill is read on every turn, so it stays compact."""


class SamplingParams(BaseModel):
    """How to sample one action."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_new_tokens: int = Field(default=64, ge=1)
    temperature: float = Field(default=1.0, ge=0)
    """0 means greedy."""
    top_p: float = Field(default=1.0, gt=0, le=1)
    stop_token_ids: tuple[int, ...] = ()
    """Generation ends after any of these (the stop token is kept: it is part of the action)."""


class EpisodeConfig(BaseModel):
    """Limits of one episode."""

    model_config = ConfigDict(extra="forbid")

    max_turns: int = Field(default=8, ge=1)
    """Policy turns before the episode ends with `step_limit`."""
    max_context_tokens: int = Field(default=2048, ge=16)
    """Transcript length past which no further turn is generated (`step_limit`)."""
    episode_timeout_s: float = Field(default=300.0, gt=0)
    lease_timeout_s: float = Field(default=120.0, gt=0)
    policy_timeout_s: float = Field(default=120.0, gt=0)
    """One generate() call; past it the episode ends with `policy_error`."""
    sandbox_retries: int = Field(default=1, ge=0)
    """Fresh-sandbox retries of an episode whose sandbox failed."""
    max_sandbox_errors_in_a_row: int = Field(default=8, ge=1)
    """Episodes ending in `sandbox_error` one after another (each after its retries) that stop the
    run, once they have gone on for `sandbox_error_streak_s`."""
    sandbox_error_streak_s: float = Field(default=30.0, ge=0)
    """How long sandbox errors must go on, unbroken, before they stop the run: a provider's brief
    outage costs some episodes, not a long run."""
    sampling: SamplingParams = SamplingParams()


class RolloutSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    group_size: int = Field(default=4, ge=1)
    """G: episodes per task per round (GRPO normalises within them; pass@k needs k ≤ G)."""
    concurrency: int = Field(default=64, ge=1)
    """Episodes in flight across all workers."""
    renderer: Literal["plain", "chat", "messages"] = "plain"
    """plain: a shell transcript; chat: inside the model's HF chat template; messages: chat messages
    for a policy behind a chat API (`policy.type: chat`, which picks it when left unset)."""
    skill: str | None = Field(default=None, max_length=MAX_SKILL_CHARS)
    """A skill document (Markdown), placed verbatim in the agent's system message, after the
    environment's own system prompt if it has one; the plain renderer, which has no system
    message, puts it before the task prompt. `--skill FILE` on train and eval sets it;
    `hillclimb optimize` learns one (`best_skill.md`)."""
    episode: EpisodeConfig = EpisodeConfig()
