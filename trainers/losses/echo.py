"""ECHO: cross-entropy on the environment's own tokens, and the rollout filters that gate it.

    per-trajectory stats ─► keep_by_parse_failures / keep_not_errored ─► rollout_keep_mask ─► keep_B
    roles_BT, keep_B ─► env_mask ─► env_mask_BT
    logprobs_BT, env_mask_BT ─► env_cross_entropy ─► (ce nats/token, n_env_tokens)

A filtered trajectory loses only its ENV tokens: its actions still train GRPO (echo-rl zeroes
the world-model mask, not the policy mask). The CE has its own normaliser so that adding ECHO
does not change GRPO's effective learning rate.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hillclimb.config.losses import RolloutFilterConfig
from trainers.roles import Role

__all__ = ["env_cross_entropy", "env_mask", "keep_by_parse_failures", "keep_not_errored", "rollout_keep_mask"]

Stats = torch.Tensor | Sequence[float] | Sequence[int] | Sequence[bool]


def env_cross_entropy(
    logprobs_BT: torch.Tensor, env_mask_BT: torch.Tensor, *, n_env_tokens: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean negative log-likelihood of ENV targets: -Σ_env logp / n_env_tokens, in nats per token.

    `n_env_tokens` defaults to the ENV tokens in this batch; pass the count over the whole
    optimizer step when accumulating micro-batches. Positions outside the mask are never read
    into the arithmetic. Returns (ce, count of ENV tokens in this batch); ce is 0 with no ENV tokens.
    """
    mask = env_mask_BT.bool()
    logp_N = logprobs_BT[mask]
    n = float(logp_N.numel()) if n_env_tokens is None else float(n_env_tokens)
    ce = -logp_N.sum() / max(n, 1.0)
    return ce, logp_N.new_tensor(float(logp_N.numel()))


def env_mask(roles_BT: torch.Tensor, keep_B: torch.Tensor | None = None) -> torch.Tensor:
    """Positions whose target is an ENV token, in trajectories the filters kept. [B,T] bool."""
    mask_BT = roles_BT == Role.ENV
    if keep_B is not None:
        mask_BT = mask_BT & keep_B.to(device=mask_BT.device, dtype=torch.bool)[:, None]
    return mask_BT


def keep_by_parse_failures(n_failed_B: Stats, n_actions_B: Stats, max_fraction: float) -> torch.Tensor:
    """Keep trajectories whose share of unparseable actions is at most `max_fraction`. [B] bool.

    A trajectory with no actions has nothing that failed and is kept.
    """
    failed = torch.as_tensor(n_failed_B, dtype=torch.float64)
    total = torch.as_tensor(n_actions_B, dtype=torch.float64)
    if failed.shape != total.shape or failed.dim() != 1:
        raise ValueError(f"n_failed {tuple(failed.shape)} and n_actions {tuple(total.shape)} must be equal [B] vectors")
    if bool((failed > total).any()) or bool((failed < 0).any()):
        raise ValueError("n_failed must be between 0 and n_actions for every trajectory")
    fraction = torch.where(total > 0, failed / total.clamp(min=1), torch.zeros_like(failed))
    return fraction <= max_fraction


def keep_not_errored(errored_B: Stats) -> torch.Tensor:
    """Keep trajectories that did not end in an error. [B] bool."""
    return ~torch.as_tensor(errored_B, dtype=torch.bool)


def rollout_keep_mask(
    filters: RolloutFilterConfig,
    batch_size: int,
    *,
    n_failed_actions_B: Stats | None = None,
    n_actions_B: Stats | None = None,
    errored_B: Stats | None = None,
) -> torch.Tensor:
    """AND of the filters `filters` turns on; each needs its stats, the rest are ignored. [B] bool."""
    keep = torch.ones(batch_size, dtype=torch.bool)
    if filters.max_parse_failure_fraction is not None:
        if n_failed_actions_B is None or n_actions_B is None:
            raise ValueError("max_parse_failure_fraction is set: pass n_failed_actions_B and n_actions_B")
        max_fraction = filters.max_parse_failure_fraction
        keep &= _sized(keep_by_parse_failures(n_failed_actions_B, n_actions_B, max_fraction), keep)
    if filters.drop_errored:
        if errored_B is None:
            raise ValueError("drop_errored is set: pass errored_B")
        keep &= _sized(keep_not_errored(errored_B), keep)
    return keep


def _sized(mask_B: torch.Tensor, like_B: torch.Tensor) -> torch.Tensor:
    # No broadcasting: a one-element stats list must not silently filter a whole batch.
    if mask_B.shape != like_B.shape:
        raise ValueError(f"per-trajectory stats have shape {tuple(mask_B.shape)}, expected {tuple(like_B.shape)}")
    return mask_B
