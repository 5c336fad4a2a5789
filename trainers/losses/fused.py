"""A per-token loss through the LM head in one pass: the gradients are computed in the forward.

    hidden_NH, weight_VH, bias_V ─► per chunk of C tokens: logits_CV (fp32), log-softmax, gather ─► logp_C
    token_loss(logp_C, chunk) ─► its loss, and d loss / d logp_C (autograd on C numbers)
    d logits = d logp · (onehot(target) − softmax) ─► grad_hidden_C, grad_weight += , grad_bias +=
    ─► (loss, logprobs_N); backward only scales the stored gradients by the upstream one.

`ChunkedTargetLogprobs` (logprobs.py) returns log-probs and recomputes every tile's logits in
backward, because the loss built on top is unknown until then: four LM-head matmuls per token
against the naive path's three. Here the loss is known up front, as a function the forward can
call on each chunk's log-probs, so each token costs the three matmuls (logits, grad_hidden,
grad_weight) and nothing is recomputed. The price: a chunk spans the whole vocabulary (its
softmax needs every logit before the gradient exists), so chunks are rows of V logits, and the
loss must be separable, a sum over tokens of terms that each depend on that token's own
log-prob (with normalisers fixed beforehand). GRPO's clipped ratio, its k3 KL and ECHO's CE are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from trainers.losses.logprobs import _accumulate_fp32, _Tile

__all__ = ["FusedLinearTokenLoss", "TokenLoss", "fused_token_loss"]

TokenLoss = Callable[[torch.Tensor, slice], torch.Tensor]
"""(log-probs of tokens s..e-1 as fp32 [e-s], slice(s, e)) -> the loss of those tokens, a 0-dim tensor.

It is called once per chunk, in token order, with the log-probs as a leaf that requires grad; the
total loss is the sum over chunks, so each token's term must depend on its own log-prob only."""


def fused_token_loss(
    hidden_NH: torch.Tensor,
    weight_VH: torch.Tensor,
    targets_N: torch.Tensor,
    token_loss: TokenLoss,
    bias_V: torch.Tensor | None = None,
    *,
    inv_temperature_N: torch.Tensor | None = None,
    max_tile_logits: int = 2**25,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ over chunks of `token_loss(logp_chunk)`, with logp = log softmax((h·Wᵀ + b) · inv_temperature)[target].

    Returns (loss, logprobs_N): the loss carries the gradient to `hidden`, `weight` and `bias`; the
    log-probs are detached, for metrics. `inv_temperature_N` scales each token's logits (None: 1).
    A chunk holds `max_tile_logits // V` tokens (at least one): 2²⁵ fp32 logits, 128 MiB, by default.
    Outside grad mode, or when nothing requires grad, no gradient is computed.
    """
    if hidden_NH.dim() != 2 or targets_N.shape != hidden_NH.shape[:1]:
        raise ValueError(
            f"hidden {tuple(hidden_NH.shape)} must be [N, H] with targets [N], got {tuple(targets_N.shape)}"
        )
    if weight_VH.shape[-1] != hidden_NH.shape[-1]:
        raise ValueError(f"weight {tuple(weight_VH.shape)} does not match hidden size {hidden_NH.shape[-1]}")
    if inv_temperature_N is not None and inv_temperature_N.shape != targets_N.shape:
        raise ValueError(f"inv_temperature {tuple(inv_temperature_N.shape)} must have one entry per token")
    if max_tile_logits < 1:
        raise ValueError(f"max_tile_logits must be >= 1, got {max_tile_logits}")
    chunk = max(1, max_tile_logits // weight_VH.shape[0])
    params = (hidden_NH, weight_VH, bias_V)
    want_grads = torch.is_grad_enabled() and any(p is not None and p.requires_grad for p in params)
    scale_N = inv_temperature_N.float() if inv_temperature_N is not None else None
    return FusedLinearTokenLoss.apply(hidden_NH, weight_VH, bias_V, targets_N, scale_N, token_loss, chunk, want_grads)


class FusedLinearTokenLoss(torch.autograd.Function):
    """forward(hidden_NH, weight_VH, bias_V | None, targets_N, inv_temperature_N | None, token_loss,
    chunk_tokens, want_grads) -> (loss, logprobs_N). See the module docstring."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden_NH: torch.Tensor,
        weight_VH: torch.Tensor,
        bias_V: torch.Tensor | None,
        targets_N: torch.Tensor,
        inv_temperature_N: torch.Tensor | None,
        token_loss: TokenLoss,
        chunk_tokens: int,
        want_grads: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        (n, _), v = hidden_NH.shape, weight_VH.shape[0]
        device, dtype = hidden_NH.device, hidden_NH.dtype
        f32 = {"dtype": torch.float32, "device": device}
        logprobs_N = torch.empty(n, **f32)
        loss = torch.zeros((), **f32)
        need_h, need_w, need_b = (want_grads and ctx.needs_input_grad[i] for i in range(3))
        # Contiguous whatever the states' strides: mm writes its rows.
        grad_h = torch.empty(hidden_NH.shape, dtype=dtype, device=device) if need_h else None
        grad_w = torch.zeros(weight_VH.shape, **f32) if need_w else None
        grad_b = torch.zeros(v, **f32) if need_b else None
        w_VH = weight_VH.to(dtype)  # once, not per chunk, if an fp32 head meets bf16 states
        tile = _Tile(min(chunk_tokens, n), v, device)
        with torch.autocast(device.type, enabled=False):  # dtypes are chosen here, not by autocast
            for s in range(0, n, chunk_tokens):
                e = min(s + chunk_tokens, n)
                h_CH, y_C1 = hidden_NH[s:e], targets_N[s:e, None]
                scale_C1 = 1.0 if inv_temperature_N is None else inv_temperature_N[s:e, None]
                # The tile becomes exp(logits − max), the softmax's numerator; log-probs come out on the way.
                x_CV = tile.logits(h_CH, w_VH, bias_V, scale_C1)
                max_C1 = x_CV.amax(dim=1, keepdim=True)
                target_C = x_CV.gather(1, y_C1).squeeze(1) - max_C1.squeeze(1)
                sum_C1 = x_CV.sub_(max_C1).exp_().sum(dim=1, keepdim=True)
                logp_C = target_C - sum_C1.squeeze(1).log()
                logprobs_N[s:e] = logp_C
                chunk_loss, dlogp_C = _loss_and_grad(token_loss, logp_C, slice(s, e), want_grads)
                loss += chunk_loss
                if not want_grads:
                    continue
                # d logits = d logp · (onehot(target) − softmax) · inv_temperature, in place.
                up_C1 = dlogp_C[:, None] * scale_C1
                x_CV.mul_(-up_C1 / sum_C1).scatter_add_(1, y_C1, up_C1)
                g_CV = x_CV.to(dtype)  # no copy when fp32
                if grad_h is not None:
                    torch.mm(g_CV, w_VH, out=grad_h[s:e])
                if grad_w is not None:
                    _accumulate_fp32(grad_w, g_CV.t(), h_CH)
                if grad_b is not None:
                    grad_b += x_CV.sum(dim=0)
        ctx.mark_non_differentiable(logprobs_N)
        grad_w = grad_w.to(weight_VH.dtype) if grad_w is not None else None
        grad_b = grad_b.to(bias_V.dtype) if grad_b is not None else None
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.spent = False
        return loss, logprobs_N

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_loss: torch.Tensor, _grad_logprobs: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        # The forward's gradients are d loss / d input; the chain rule only scales them, in place: a
        # copy of the V×H weight gradient would cost as much memory as the gradient itself.
        if ctx.spent:
            raise RuntimeError(
                "FusedLinearTokenLoss scales its stored gradients in place: backward runs once per forward"
            )
        ctx.spent = True
        scaled = [None if g is None else g.mul_(grad_loss.to(g.dtype)) for g in ctx.saved_tensors]
        return *scaled, None, None, None, None, None


def _loss_and_grad(
    token_loss: TokenLoss, logp_C: torch.Tensor, chunk: slice, want_grad: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The chunk's loss (detached) and, when wanted, its gradient with respect to the chunk's log-probs."""
    with torch.enable_grad():
        leaf_C = logp_C.detach().requires_grad_(want_grad)
        loss = token_loss(leaf_C, chunk)
        if loss.dim() != 0:
            raise ValueError(f"token_loss must return a 0-dim loss for its chunk, got shape {tuple(loss.shape)}")
        if not want_grad:
            return loss.detach().float(), None
        (grad_C,) = torch.autograd.grad(loss, leaf_C, allow_unused=True)
    return loss.detach().float(), torch.zeros_like(logp_C) if grad_C is None else grad_C.float()
