"""GRPO: group-relative advantages and the clipped, token-normalised policy-gradient term.

    rewards_PG ─► group_advantages ─► advantages (one per episode)
    logprobs_BT, sampling_logprobs_BT, advantages_B, action_mask_BT [, ref_logprobs_BT]
        ─► grpo_loss ─► (loss, metrics)

Only positions whose target is an ACTION token enter: they are selected by boolean indexing
before any arithmetic, so whatever sits at the other positions (even inf or NaN) cannot reach
the loss or its gradient.
"""

from __future__ import annotations

import torch

__all__ = ["group_advantages", "grpo_loss", "k3_kl"]


def group_advantages(rewards_PG: torch.Tensor, *, scale_by_std: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """Advantages of G episodes per task: reward minus the group mean, optionally over (std + eps).

    `rewards_PG` holds P tasks (prompts) × G episodes each. The std is the sample std
    (Bessel-corrected, as TRL and verl use), so G must be at least 2. A group whose rewards are
    all equal carries no signal: its advantages are exactly 0 (not a rounding residue of the
    mean), so it contributes nothing to the GRPO gradient.
    """
    if rewards_PG.dim() != 2 or rewards_PG.shape[1] < 2:
        raise ValueError(
            f"rewards must be [tasks, episodes] with at least 2 episodes per task, got {tuple(rewards_PG.shape)}"
        )
    r = rewards_PG.to(torch.promote_types(rewards_PG.dtype, torch.float32))
    centred = r - r.mean(dim=1, keepdim=True)
    if scale_by_std:
        centred = centred / (r.std(dim=1, keepdim=True) + eps)
    flat_P1 = (r == r[:, :1]).all(dim=1, keepdim=True)
    return torch.where(flat_P1, torch.zeros_like(centred), centred)


def k3_kl(logprobs_N: torch.Tensor, ref_logprobs_N: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimate of KL(π ‖ π_ref) per token: exp(d) - d - 1 with d = ref - logp. Always >= 0."""
    d = ref_logprobs_N - logprobs_N
    return torch.exp(d) - d - 1.0


def grpo_loss(
    logprobs_BT: torch.Tensor,
    sampling_logprobs_BT: torch.Tensor | None,
    advantages_B: torch.Tensor,
    action_mask_BT: torch.Tensor,
    *,
    clip_eps_low: float = 0.2,
    clip_eps_high: float = 0.2,
    kl_coef: float = 0.0,
    ref_logprobs_BT: torch.Tensor | None = None,
    n_action_tokens: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped importance-ratio objective on ACTION tokens, summed and divided by the action-token count.

    Per action token t of episode b, with r = exp(logp - sampling_logp) and A = advantages_B[b]:
        ℓ_t = -min(r·A, clip(r, 1 - eps_low, 1 + eps_high)·A) + kl_coef · k3(logp, ref_logp)
    loss = Σ ℓ_t / n_action_tokens (default: the action tokens in this batch; pass the count over
    the whole optimizer step when accumulating micro-batches). `sampling_logprobs_BT=None` means
    strictly on-policy (r = 1 with the gradient of log p). `kl_coef=0` skips the KL entirely and
    needs no reference log-probs. ECHO's advantage form (`echo.form`) calls it on ENV tokens, with
    advantage λ and the ENV-token count as the normaliser.

    Metrics (0-dim, detached): `grpo/loss`, `grpo/clip_frac` (share of action tokens whose
    gradient clipping removed), `grpo/clip_frac_low`, `grpo/clip_frac_high`, `grpo/ratio_mean`,
    `grpo/kl` (mean k3, only when kl_coef > 0), `grpo/n_action_tokens`.
    """
    mask = action_mask_BT.bool()
    logp_N = logprobs_BT[mask]
    old_N = logp_N.detach() if sampling_logprobs_BT is None else sampling_logprobs_BT[mask].to(logp_N.dtype)
    adv_N = advantages_B.to(logp_N.dtype)[:, None].expand(mask.shape)[mask]
    ratio_N = torch.exp(logp_N - old_N)
    clipped_N = torch.clamp(ratio_N, 1.0 - clip_eps_low, 1.0 + clip_eps_high)
    per_token_N = torch.maximum(-ratio_N * adv_N, -clipped_N * adv_N)
    if kl_coef != 0.0:
        if ref_logprobs_BT is None:
            raise ValueError("kl_coef > 0 needs ref_logprobs_BT; pass the reference model's log-probs or set kl_coef=0")
        kl_N = k3_kl(logp_N, ref_logprobs_BT[mask].to(logp_N.dtype))
        per_token_N = per_token_N + kl_coef * kl_N
    n = float(logp_N.numel()) if n_action_tokens is None else float(n_action_tokens)
    loss = per_token_N.sum() / max(n, 1.0)

    with torch.no_grad():
        r = ratio_N.detach()
        low = (r < 1.0 - clip_eps_low) & (adv_N < 0)
        high = (r > 1.0 + clip_eps_high) & (adv_N > 0)
        count = max(float(logp_N.numel()), 1.0)
        metrics = {
            "grpo/loss": loss.detach(),
            "grpo/clip_frac": (low | high).sum() / count,
            "grpo/clip_frac_low": low.sum() / count,
            "grpo/clip_frac_high": high.sum() / count,
            "grpo/ratio_mean": r.sum() / count,
            "grpo/n_action_tokens": logp_N.new_tensor(float(logp_N.numel())).detach(),
        }
        if kl_coef != 0.0:
            metrics["grpo/kl"] = kl_N.detach().sum() / count
    return loss, metrics
