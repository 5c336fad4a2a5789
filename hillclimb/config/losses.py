"""Loss configuration: GRPO clipping and KL, the ECHO λ schedule, and the rollout filters.

Pure pydantic (no torch) so the run config validates without importing the training stack.
`lambda_at` turns a schedule and an optimizer step into the λ the loss uses at that step.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "ConstantLambda",
    "EchoConfig",
    "GRPOConfig",
    "LambdaSchedule",
    "LinearDecayLambda",
    "LossConfig",
    "RolloutFilterConfig",
    "StepDecayLambda",
    "lambda_at",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GRPOConfig(_Model):
    """The policy-gradient term on ACTION tokens."""

    clip_eps_low: float = Field(0.2, ge=0.0, lt=1.0, allow_inf_nan=False)
    """Lower clip: the ratio is clipped at 1 - clip_eps_low. 0 clips every decrease."""
    clip_eps_high: float = Field(0.2, ge=0.0, allow_inf_nan=False)
    """Upper clip: the ratio is clipped at 1 + clip_eps_high (DAPO's clip-higher uses 0.28)."""
    kl_coef: float = Field(0.0, ge=0.0, allow_inf_nan=False)
    """Weight of the k3 KL estimate to the reference policy. 0 turns it off and needs no reference log-probs."""
    scale_advantages_by_std: bool = True
    """Divide group-centred rewards by the group's std (GRPO). False keeps them mean-centred only (Dr. GRPO)."""
    advantage_eps: float = Field(1e-6, gt=0.0, allow_inf_nan=False)
    """Added to the group std before dividing, in reward units."""


class ConstantLambda(_Model):
    """λ is the same at every step."""

    type: Literal["constant"] = "constant"
    value: float = Field(0.005, ge=0.0, allow_inf_nan=False)
    """λ. 0 is plain GRPO, bit for bit. The default is the value Prime Intellect found stable on
    GLM-4.5-Air where 0.05 collapsed; echo-rl's published Qwen3-8B run uses 0.05."""


class LinearDecayLambda(_Model):
    """λ moves linearly from `start` at step 0 to `end` at step `steps`, then stays at `end`."""

    type: Literal["linear_decay"] = "linear_decay"
    start: float = Field(ge=0.0, allow_inf_nan=False)
    """λ at step 0."""
    end: float = Field(0.0, ge=0.0, allow_inf_nan=False)
    """λ from step `steps` on, exactly (0 hands over to plain GRPO)."""
    steps: int = Field(ge=1)
    """Optimizer steps the move takes."""


class StepDecayLambda(_Model):
    """λ = start · factor^k, where k counts the milestones at or before the step."""

    type: Literal["step_decay"] = "step_decay"
    start: float = Field(ge=0.0, allow_inf_nan=False)
    """λ before the first milestone."""
    milestones: tuple[int, ...] = Field(min_length=1)
    """Optimizer steps, strictly increasing, at which λ is multiplied by `factor`."""
    factor: float = Field(0.1, ge=0.0, allow_inf_nan=False)
    """Multiplier applied at each milestone; 0 switches ECHO off at the first one."""

    @model_validator(mode="after")
    def _milestones_increase(self) -> StepDecayLambda:
        ms = self.milestones
        if ms[0] < 0 or any(b <= a for a, b in zip(ms, ms[1:], strict=False)):
            raise ValueError(f"milestones must be non-negative and strictly increasing, got {list(ms)}")
        return self


LambdaSchedule = Annotated[ConstantLambda | LinearDecayLambda | StepDecayLambda, Field(discriminator="type")]


class RolloutFilterConfig(_Model):
    """Which trajectories keep their ENV tokens in the ECHO term (their actions still train GRPO)."""

    max_parse_failure_fraction: float | None = Field(None, ge=0.0, le=1.0)
    """Drop a trajectory's ENV tokens when more than this fraction of its actions failed to parse.
    None turns the filter off; 0 keeps only trajectories whose every action parsed."""
    drop_errored: bool = False
    """Drop the ENV tokens of trajectories that ended in an error (sandbox crash, timeout)."""


class EchoConfig(_Model):
    """The world-model term on ENV tokens: λ · cross-entropy, or the GRPO surrogate with advantage λ."""

    schedule: LambdaSchedule = ConstantLambda()
    """λ as a function of the optimizer step."""
    form: Literal["cross_entropy", "advantage"] = "cross_entropy"
    """How λ enters the loss. `cross_entropy`: λ · CE over the kept ENV tokens. `advantage`: the
    GRPO term's own surrogate applied to the kept ENV tokens with a constant advantage λ (the "same
    forward_backward, small positive advantage on the environment tokens" of Tinker-style loops,
    with GRPO's clipping): per ENV token -min(r·λ, clip(r, 1 - clip_eps_low, 1 + clip_eps_high)·λ),
    r = exp(logp - old_logp), no KL, over the CE's ENV-token count, at temperature 1 like the CE.
    Every `logprob_impl` serves both: they differ only in the per-token loss on the log-probs.
    The old log-prob of an ENV token (the sampler never gives one) is
    `LossBatch.env_old_logprobs_BT`, by default the learner's own in the same pass, detached: r = 1
    and the gradient equals the CE form's (to rounding; the loss value is -λ where the CE form's is
    λ · CE). They part only where the old log-probs are an earlier policy's (several passes over a
    batch): each ENV token's gradient is then the CE form's times r while r ≤ 1 + clip_eps_high,
    and 0 above it (λ > 0, so the lower clip never applies)."""
    verifier_free: bool = False
    """Turn the reward term off: the loss is the ENV term alone, and no rewards or sampling log-probs are needed."""
    filters: RolloutFilterConfig = RolloutFilterConfig()
    """Rollout filters applied to the ENV mask."""

    @model_validator(mode="after")
    def _something_trains(self) -> EchoConfig:
        if self.verifier_free and isinstance(self.schedule, ConstantLambda) and self.schedule.value == 0.0:
            raise ValueError(
                "echo.verifier_free turns the reward term off and echo.schedule.value is 0, so nothing would "
                "train: set a positive λ or turn verifier_free off"
            )
        return self


class LossConfig(_Model):
    """Everything `loss_from_hidden` / `loss_from_logprobs` needs besides the batch and the step."""

    grpo: GRPOConfig = GRPOConfig()
    """The policy-gradient term."""
    echo: EchoConfig = EchoConfig()
    """The world-model term."""
    temperature: float = Field(1.0, gt=0.0, allow_inf_nan=False)
    """ACTION logits are divided by this before the softmax; use the sampler's temperature so ratios
    compare like with like. ENV tokens always use 1: the world-model term trains the model's own
    distribution."""
    chunk_tokens: int = Field(1024, ge=1)
    """Tokens per tile of LM-head logits. Larger reads the head fewer times; the tile is fp32."""
    chunk_vocab: int = Field(32768, ge=1)
    """Vocabulary rows per tile; the tile takes chunk_tokens · chunk_vocab · 4 bytes (128 MiB at the defaults).
    `fused` keeps that tile size but spans the whole vocabulary: chunk_tokens · chunk_vocab / V tokens a chunk."""
    logprob_impl: Literal["auto", "fused", "chunked", "liger", "naive"] = "auto"
    """How the LM head meets the loss. `fused`: one pass, gradients computed in the forward (three
    head matmuls a token); `chunked`: log-probs, then every tile recomputed in backward (four);
    `liger`: Liger's fused kernel (CUDA); `naive`: full logits, the reference. `auto` uses Liger
    on CUDA when a correct version is installed, else `fused`."""


def lambda_at(step: int, schedule: ConstantLambda | LinearDecayLambda | StepDecayLambda) -> float:
    """λ at optimizer step `step` (0-based). Returns exactly `end` / exactly 0.0 where a schedule gets there."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if isinstance(schedule, ConstantLambda):
        return schedule.value
    if isinstance(schedule, LinearDecayLambda):
        if step >= schedule.steps:
            return schedule.end  # exact, so a decay to 0 is bit-identical to GRPO from here on
        return schedule.start + (schedule.end - schedule.start) * (step / schedule.steps)
    passed = sum(1 for m in schedule.milestones if m <= step)
    return schedule.start * schedule.factor**passed
