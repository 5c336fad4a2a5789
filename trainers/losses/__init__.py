"""Learner losses: GRPO on ACTION tokens plus ECHO's λ-weighted term on ENV tokens, as pure tensor functions.

Data flow, as the learner uses it:

    rewards_PG ─► group_advantages ─► advantages_B          (per episode, G episodes per task)
    episode stats ─► rollout_keep_mask ─► env_keep_B        (which episodes' ENV tokens ECHO may train)
    input_ids, roles, sampling logprobs ─► LossBatch.from_tokens ─► batch   (one-position shift)
    model trunk ─► hidden[:, :-1] ─► loss_from_hidden(hidden, lm_head.weight, batch, config, step=step)
                                      └─ fused_token_loss: the LM head in chunks of tokens (never [B,T,V]
                                         logits); per chunk, loss_from_logprobs (grpo_loss + lambda_at(step)
                                         · env_cross_entropy, or grpo_loss on ENV tokens with advantage
                                         λ: `echo.form`) and its gradient, in the same pass
                                   ─► (loss, metrics) ─► loss.backward()

`loss_from_logprobs` is the same objective for callers that already have per-target log-probs.
Roles follow `trainers.roles.Role`; every mask is aligned to the target token (position t
predicts token t+1 and has token t+1's role).

The config models (`LossConfig` and friends, `lambda_at`) import only pydantic; the tensor
functions load torch on first use, so validating a run config stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from hillclimb.config.losses import (
    ConstantLambda,
    EchoConfig,
    GRPOConfig,
    LambdaSchedule,
    LinearDecayLambda,
    LossConfig,
    RolloutFilterConfig,
    StepDecayLambda,
    lambda_at,
)

if TYPE_CHECKING:
    from trainers.losses.echo import (
        env_cross_entropy,
        env_mask,
        keep_by_parse_failures,
        keep_not_errored,
        rollout_keep_mask,
    )
    from trainers.losses.fused import FusedLinearTokenLoss, fused_token_loss
    from trainers.losses.grpo import group_advantages, grpo_loss, k3_kl
    from trainers.losses.logprobs import (
        ChunkedTargetLogprobs,
        liger_available,
        naive_token_logprobs,
        token_logprobs,
    )
    from trainers.losses.objective import (
        LossBatch,
        loss_from_hidden,
        loss_from_logprobs,
    )

_LAZY = {
    "FusedLinearTokenLoss": "fused",
    "fused_token_loss": "fused",
    "ChunkedTargetLogprobs": "logprobs",
    "liger_available": "logprobs",
    "naive_token_logprobs": "logprobs",
    "token_logprobs": "logprobs",
    "group_advantages": "grpo",
    "grpo_loss": "grpo",
    "k3_kl": "grpo",
    "env_cross_entropy": "echo",
    "env_mask": "echo",
    "keep_by_parse_failures": "echo",
    "keep_not_errored": "echo",
    "rollout_keep_mask": "echo",
    "LossBatch": "objective",
    "loss_from_hidden": "objective",
    "loss_from_logprobs": "objective",
}

__all__ = [
    "ChunkedTargetLogprobs",
    "ConstantLambda",
    "EchoConfig",
    "FusedLinearTokenLoss",
    "GRPOConfig",
    "LambdaSchedule",
    "LinearDecayLambda",
    "LossBatch",
    "LossConfig",
    "RolloutFilterConfig",
    "StepDecayLambda",
    "env_cross_entropy",
    "env_mask",
    "fused_token_loss",
    "group_advantages",
    "grpo_loss",
    "k3_kl",
    "keep_by_parse_failures",
    "keep_not_errored",
    "lambda_at",
    "liger_available",
    "loss_from_hidden",
    "loss_from_logprobs",
    "naive_token_logprobs",
    "rollout_keep_mask",
    "token_logprobs",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'trainers.losses' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"trainers.losses.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
