"""The learner's loss: L = L_GRPO(ACTION) + λ · CE(ENV), each term over its own token count.

    hidden_BTH, lm_head ─► loss_from_hidden ─► logprobs at the positions some term trains
                                               (ACTION unless verifier-free; ENV only if λ != 0)
                           ─► loss_from_logprobs ─► grpo_loss (+ the ENV term) ─► (loss, metrics)

The ENV term takes one of two forms (`echo.form`): λ · env_cross_entropy, or ECHO's advantage
form, the same `grpo_loss` called on the kept ENV tokens with advantage λ: the one per-token
advantage vector a Tinker-style `forward_backward` takes (group advantages on ACTION, λ on ENV),
through GRPO's clipped surrogate (Tinker's plain `importance_sampling` loss does not clip). Its
old log-probs are this pass's own by default, so on-policy its gradient is the CE form's; see
`EchoConfig.form` for where they part.

λ = 0 is bit-identical to plain GRPO: the ENV term is not added (not added as 0 · CE, which is NaN
when the CE is inf) and ENV positions are not even sent through the LM head, so the chunking and
therefore every float of the GRPO path are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from hillclimb.config.losses import LossConfig, lambda_at
from trainers.losses.echo import env_cross_entropy, env_mask
from trainers.losses.fused import fused_token_loss
from trainers.losses.grpo import grpo_loss
from trainers.losses.logprobs import liger_usable, token_logprobs
from trainers.roles import Role

__all__ = ["LossBatch", "loss_from_hidden", "loss_from_logprobs"]


@dataclass(frozen=True)
class LossBatch:
    """One learner micro-batch, already shifted: position t predicts `targets_BT[:, t]`."""

    targets_BT: torch.Tensor
    """Token id predicted at each position (`input_ids[:, 1:]`). int64."""
    roles_BT: torch.Tensor
    """`Role` of each target token (`roles[:, 1:]`). Padding carries `Role.PROMPT`, which nothing trains."""
    advantages_B: torch.Tensor | None = None
    """GRPO advantage of each episode (see `group_advantages`). None only in verifier-free mode."""
    sampling_logprobs_BT: torch.Tensor | None = None
    """Log-prob the sampler gave each target, read at ACTION positions only. None: strictly on-policy (ratio 1)."""
    ref_logprobs_BT: torch.Tensor | None = None
    """Reference-model log-prob of each target; needed only when `grpo.kl_coef` > 0."""
    env_keep_B: torch.Tensor | None = None
    """Rollout-filter verdict per episode (see `rollout_keep_mask`); False drops its ENV tokens. None keeps all."""
    n_action_tokens: float | None = None
    """GRPO normaliser. None: ACTION tokens in this batch; set it to the optimizer step's total when accumulating."""
    n_env_tokens: float | None = None
    """ECHO normaliser. None: kept ENV tokens in this batch; set it to the optimizer step's total when accumulating."""
    env_old_logprobs_BT: torch.Tensor | None = None
    """Old log-prob of each ENV target (temperature 1), read at kept ENV positions by `echo.form =
    "advantage"` only: a previous pass's detached log-probs when a batch is trained on more than
    once. None: this pass's own, detached, so the ratio is 1 (the learner makes one pass a batch)."""

    def rows(self, episodes: slice) -> LossBatch:
        """These episodes of the batch (per-episode tensors sliced), with the normalisers unchanged."""

        def take(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x[episodes]

        return replace(
            self,
            targets_BT=self.targets_BT[episodes],
            roles_BT=self.roles_BT[episodes],
            advantages_B=take(self.advantages_B),
            sampling_logprobs_BT=take(self.sampling_logprobs_BT),
            ref_logprobs_BT=take(self.ref_logprobs_BT),
            env_keep_B=take(self.env_keep_B),
            env_old_logprobs_BT=take(self.env_old_logprobs_BT),
        )

    @classmethod
    def from_tokens(
        cls,
        input_ids_BT: torch.Tensor,
        roles_BT: torch.Tensor,
        *,
        advantages_B: torch.Tensor | None = None,
        sampling_logprobs_BT: torch.Tensor | None = None,
        ref_logprobs_BT: torch.Tensor | None = None,
        env_keep_B: torch.Tensor | None = None,
    ) -> LossBatch:
        """Build a batch from token-aligned arrays (entry t describes token t) by the one-position shift."""

        def shift(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x[:, 1:]

        return cls(
            targets_BT=input_ids_BT[:, 1:],
            roles_BT=roles_BT[:, 1:],
            advantages_B=advantages_B,
            sampling_logprobs_BT=shift(sampling_logprobs_BT),
            ref_logprobs_BT=shift(ref_logprobs_BT),
            env_keep_B=env_keep_B,
        )


def loss_from_hidden(
    hidden_BTH: torch.Tensor,
    lm_head_weight_VH: torch.Tensor,
    batch: LossBatch,
    config: LossConfig,
    *,
    step: int,
    lm_head_bias_V: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The learner's entry point: final hidden states of the predicting positions → (loss, metrics).

    `hidden_BTH` must line up with `batch.targets_BT` (pass `hidden[:, :-1]` of the full sequence:
    the last position predicts nothing). Only positions where a term trains go through the LM
    head, in chunks, so no [B,T,V] logits exist: by default (`fused`) in one pass that computes the
    gradients on the way (see `fused_token_loss`). Metrics as in `loss_from_logprobs`.
    """
    if hidden_BTH.shape[:2] != batch.targets_BT.shape:
        raise ValueError(
            f"hidden {tuple(hidden_BTH.shape)} does not line up with targets {tuple(batch.targets_BT.shape)}; "
            "pass hidden[:, :-1] of the full sequence (position t predicts token t+1)"
        )
    lam = lambda_at(step, config.echo.schedule)
    none_BT = torch.zeros_like(batch.roles_BT, dtype=torch.bool)
    action_BT = none_BT if config.echo.verifier_free else batch.roles_BT == Role.ACTION
    env_BT = env_mask(batch.roles_BT, batch.env_keep_B) if lam != 0.0 else none_BT
    if _loss_impl(config.logprob_impl, hidden_BTH) == "fused":
        head = (lm_head_weight_VH, lm_head_bias_V)
        return _fused_loss(hidden_BTH, head, batch, config, step=step, action_BT=action_BT, env_BT=env_BT)
    # ACTION log-probs at the sampling temperature (the importance ratio's denominator was taken
    # there); ENV log-probs at 1: the world model is the model's own distribution, as evaluated.
    logprobs_BT = torch.zeros(batch.roles_BT.shape, dtype=torch.float32, device=hidden_BTH.device)
    for trained_BT, temperature in ((action_BT, config.temperature), (env_BT, 1.0)):
        if trained_BT is action_BT or trained_BT.any():  # the ACTION call always runs: the loss keeps a graph
            logp_N = token_logprobs(
                hidden_BTH[trained_BT],
                lm_head_weight_VH,
                batch.targets_BT[trained_BT],
                lm_head_bias_V,
                temperature=temperature,
                chunk_tokens=config.chunk_tokens,
                chunk_vocab=config.chunk_vocab,
                impl=config.logprob_impl,
            )
            logprobs_BT = logprobs_BT.masked_scatter(trained_BT, logp_N)
    return loss_from_logprobs(logprobs_BT, batch, config, step=step)


def _loss_impl(impl: str, hidden_BTH: torch.Tensor) -> str:
    if impl == "auto":
        return "liger" if liger_usable(hidden_BTH) else "fused"
    return impl


def _fused_loss(
    hidden_BTH: torch.Tensor,
    head: tuple[torch.Tensor, torch.Tensor | None],
    batch: LossBatch,
    config: LossConfig,
    *,
    step: int,
    action_BT: torch.Tensor,
    env_BT: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The same objective through `fused_token_loss`: every trained token becomes a one-token
    episode of a flat batch, so each chunk's loss is `loss_from_logprobs` on that chunk's rows,
    with the normalisers of the whole batch. Metrics come from the whole batch's log-probs."""
    trained_BT = action_BT | env_BT
    episode_N = trained_BT.nonzero()[:, 0]

    def one_per_row(x_BT: torch.Tensor | None) -> torch.Tensor | None:
        return None if x_BT is None else x_BT[trained_BT][:, None]

    flat = LossBatch(
        targets_BT=one_per_row(batch.targets_BT),
        roles_BT=one_per_row(batch.roles_BT),
        advantages_B=None if batch.advantages_B is None else batch.advantages_B[episode_N],
        sampling_logprobs_BT=one_per_row(batch.sampling_logprobs_BT),
        ref_logprobs_BT=one_per_row(batch.ref_logprobs_BT),
        n_action_tokens=float(action_BT.sum()) if batch.n_action_tokens is None else batch.n_action_tokens,
        n_env_tokens=float(env_BT.sum()) if batch.n_env_tokens is None else batch.n_env_tokens,
        env_old_logprobs_BT=one_per_row(batch.env_old_logprobs_BT),
    )

    def chunk_loss(logp_C: torch.Tensor, chunk: slice) -> torch.Tensor:
        return loss_from_logprobs(logp_C[:, None], flat.rows(chunk), config, step=step)[0]

    # ACTION logits at the sampling temperature, ENV at 1 (see the unfused path above).
    inv_temperature_N = torch.where(flat.roles_BT[:, 0] == Role.ACTION, 1.0 / config.temperature, 1.0)
    weight_VH, bias_V = head
    loss, logp_N = fused_token_loss(
        hidden_BTH[trained_BT],
        weight_VH,
        flat.targets_BT[:, 0],
        chunk_loss,
        bias_V,
        inv_temperature_N=inv_temperature_N,
        max_tile_logits=config.chunk_tokens * config.chunk_vocab,
    )
    logprobs_BT = torch.zeros(trained_BT.shape, dtype=torch.float32, device=logp_N.device)
    with torch.no_grad():
        _, metrics = loss_from_logprobs(logprobs_BT.masked_scatter(trained_BT, logp_N), batch, config, step=step)
    metrics["loss"] = loss.detach()
    return loss, metrics


def loss_from_logprobs(
    logprobs_BT: torch.Tensor, batch: LossBatch, config: LossConfig, *, step: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GRPO on ACTION targets plus the ENV term at λ(step) on kept ENV targets, from per-target log-probs.

    Metrics (0-dim, detached): `loss`, the `grpo/*` keys of `grpo_loss` (unless verifier-free),
    `echo/lambda`, and when λ != 0 `echo/ce` (nats per ENV token, in either form), `echo/loss`
    (the ENV term: λ · ce, or the advantage form's surrogate) and `echo/n_env_tokens`.
    """
    lam = lambda_at(step, config.echo.schedule)
    loss: torch.Tensor | None = None
    metrics: dict[str, torch.Tensor] = {}
    if not config.echo.verifier_free:
        if batch.advantages_B is None:
            raise ValueError("the GRPO term needs batch.advantages_B; set echo.verifier_free=true to train ENV only")
        g = config.grpo
        loss, grpo_metrics = grpo_loss(
            logprobs_BT,
            batch.sampling_logprobs_BT,
            batch.advantages_B,
            batch.roles_BT == Role.ACTION,
            clip_eps_low=g.clip_eps_low,
            clip_eps_high=g.clip_eps_high,
            kl_coef=g.kl_coef,
            ref_logprobs_BT=batch.ref_logprobs_BT,
            n_action_tokens=batch.n_action_tokens,
        )
        metrics.update(grpo_metrics)
    if lam != 0.0:  # λ = 0 adds nothing at all: bit-identical to GRPO even if the CE is inf/NaN
        env_term, env_metrics = _env_term(logprobs_BT, batch, config, lam)
        loss = env_term if loss is None else loss + env_term
        metrics.update(env_metrics)
    if loss is None:
        raise ValueError(f"nothing to train at step {step}: verifier-free mode and λ = 0")
    metrics["echo/lambda"] = torch.tensor(lam)
    metrics["loss"] = loss.detach()
    return loss, metrics


def _env_term(
    logprobs_BT: torch.Tensor, batch: LossBatch, config: LossConfig, lam: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The ENV term in the configured form, and its metrics; the CE is reported in both forms."""
    env_BT = env_mask(batch.roles_BT, batch.env_keep_B)
    if config.echo.form == "cross_entropy":
        ce, n_env = env_cross_entropy(logprobs_BT, env_BT, n_env_tokens=batch.n_env_tokens)
        term = lam * ce
    else:
        # One surrogate for both roles: ENV tokens are GRPO tokens whose advantage is λ, over the
        # CE's normaliser; no KL, as the CE form has none.
        g = config.grpo
        term, _ = grpo_loss(
            logprobs_BT,
            batch.env_old_logprobs_BT,
            torch.full(batch.roles_BT.shape[:1], lam, dtype=logprobs_BT.dtype, device=logprobs_BT.device),
            env_BT,
            clip_eps_low=g.clip_eps_low,
            clip_eps_high=g.clip_eps_high,
            n_action_tokens=batch.n_env_tokens,
        )
        ce, n_env = env_cross_entropy(logprobs_BT.detach(), env_BT, n_env_tokens=batch.n_env_tokens)
    return term, {"echo/ce": ce.detach(), "echo/loss": term.detach(), "echo/n_env_tokens": n_env}
