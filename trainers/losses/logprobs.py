"""Log-probabilities of target tokens from final hidden states, without full-vocabulary logits.

    hidden_NH ─┐
    weight_VH ─┼─► per tile of C tokens × K vocabulary rows: logits_CK = hidden_CH · weight_KHᵀ (+ bias) / τ
    bias_V ────┘      online fp32 log-sum-exp across tiles, gather the target ─► logprobs_N (fp32)

`token_logprobs` is the one entry point; `impl` picks how:

- `chunked`: `ChunkedTargetLogprobs`, an autograd Function that keeps only the per-token
  log-sum-exp from the forward pass and recomputes each tile's logits in backward, so peak
  extra memory is one C×K fp32 tile (plus the V×H weight gradient) instead of several N×V tensors.
- `liger`: Liger-Kernel's fused linear cross-entropy with `reduction="none"` (CUDA only). Liger
  releases before linkedin/Liger-Kernel#1298 (merged 2026-07-11) return a wrong weight gradient
  for a non-uniform per-token upstream gradient, which is exactly what GRPO sends, so the path is
  used only when the fixed code is installed (detected by its `token_grad_output` parameter).
- `naive`: full logits, `log_softmax`, gather. The reference for tests and the benchmark.
- `auto`: `liger` on CUDA when available and fixed, else `chunked`.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Literal

import torch
from torch.autograd.function import once_differentiable

__all__ = [
    "ChunkedTargetLogprobs",
    "LogprobImpl",
    "liger_available",
    "liger_usable",
    "naive_token_logprobs",
    "token_logprobs",
]

LogprobImpl = Literal["auto", "chunked", "liger", "naive"]


def token_logprobs(
    hidden_NH: torch.Tensor,
    weight_VH: torch.Tensor,
    targets_N: torch.Tensor,
    bias_V: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    chunk_tokens: int = 1024,
    chunk_vocab: int = 32768,
    impl: LogprobImpl = "auto",
) -> torch.Tensor:
    """log softmax((hidden · weightᵀ + bias) / temperature)[target] for every token, as fp32.

    `hidden` may carry any leading shape ([B,T,H] or [N,H]); `targets` has that leading shape
    and so does the result. Gradients flow to `hidden`, `weight` and `bias`. The chunked path
    works on tiles of chunk_tokens × chunk_vocab logits (fp32: 128 MiB at the defaults).
    """
    if hidden_NH.shape[:-1] != targets_N.shape:
        raise ValueError(f"hidden {tuple(hidden_NH.shape)} and targets {tuple(targets_N.shape)} disagree on tokens")
    if weight_VH.shape[-1] != hidden_NH.shape[-1]:
        raise ValueError(f"weight {tuple(weight_VH.shape)} does not match hidden size {hidden_NH.shape[-1]}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_tokens < 1 or chunk_vocab < 1:
        raise ValueError(f"chunk_tokens and chunk_vocab must be >= 1, got {chunk_tokens} and {chunk_vocab}")
    h_NH = hidden_NH.reshape(-1, hidden_NH.shape[-1])
    y_N = targets_N.reshape(-1)
    chosen = _resolve_impl(impl, h_NH)
    if chosen == "naive":
        out_N = naive_token_logprobs(h_NH, weight_VH, y_N, bias_V, temperature=temperature)
    elif chosen == "liger":
        out_N = _liger_token_logprobs(h_NH, weight_VH, y_N, bias_V, temperature)
    else:
        out_N = ChunkedTargetLogprobs.apply(h_NH, weight_VH, bias_V, y_N, 1.0 / temperature, chunk_tokens, chunk_vocab)
    return out_N.reshape(targets_N.shape)


def naive_token_logprobs(
    hidden_NH: torch.Tensor,
    weight_VH: torch.Tensor,
    targets_N: torch.Tensor,
    bias_V: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Reference: materialise fp32 logits for every token, log_softmax, gather. O(N·V) memory."""
    logits_NV = torch.nn.functional.linear(hidden_NH, weight_VH, bias_V).float()
    if temperature != 1.0:
        logits_NV = logits_NV / temperature
    return torch.log_softmax(logits_NV, dim=-1).gather(-1, targets_N.unsqueeze(-1)).squeeze(-1)


class ChunkedTargetLogprobs(torch.autograd.Function):
    """Tiled LM head + log-softmax + gather, recomputing each tile's logits in backward.

    forward(hidden_NH, weight_VH, bias_V | None, targets_N, inv_temperature, chunk_tokens, chunk_vocab)
    -> logprobs_N (fp32). Works on tiles of chunk_tokens × chunk_vocab logits: the forward pass keeps
    a running (online) log-sum-exp across vocabulary tiles and saves only that, N floats; backward
    recomputes each tile and turns it into its share of the gradients. Tiling the vocabulary, not
    just the tokens, keeps the tile small while every token chunk still reads the head (and
    updates its gradient) once per pass: memory traffic on the V×H tensors is set by chunk_tokens.
    """

    @staticmethod
    def forward(
        ctx: Any,
        hidden_NH: torch.Tensor,
        weight_VH: torch.Tensor,
        bias_V: torch.Tensor | None,
        targets_N: torch.Tensor,
        inv_temperature: float,
        chunk_tokens: int,
        chunk_vocab: int,
    ) -> torch.Tensor:
        n, v = hidden_NH.shape[0], weight_VH.shape[0]
        logprobs_N = torch.empty(n, dtype=torch.float32, device=hidden_NH.device)
        lse_N = torch.empty_like(logprobs_N)
        w_VH = weight_VH.to(hidden_NH.dtype)  # once, not per tile, if an fp32 head meets bf16 states
        tile = _Tile(min(chunk_tokens, n), min(chunk_vocab, v), w_VH.device)
        with torch.autocast(hidden_NH.device.type, enabled=False):  # dtypes are chosen here, not by autocast
            for s in range(0, n, chunk_tokens):
                e = min(s + chunk_tokens, n)
                h_CH, y_C = hidden_NH[s:e], targets_N[s:e]
                max_C = torch.full((e - s,), -torch.inf, dtype=torch.float32, device=h_CH.device)
                sum_C = torch.zeros_like(max_C)
                target_C = torch.zeros_like(max_C)
                for v0 in range(0, v, chunk_vocab):
                    v1 = min(v0 + chunk_vocab, v)
                    logits_CK = tile.logits(h_CH, w_VH[v0:v1], _rows(bias_V, v0, v1), inv_temperature)
                    hit_C, col_C1 = _targets_in(y_C, v0, v1)
                    target_C = torch.where(hit_C, logits_CK.gather(1, col_C1).squeeze(1), target_C)
                    # Online log-sum-exp: rescale the running sum to the new max, add this tile in place.
                    new_max_C = torch.maximum(max_C, logits_CK.amax(dim=1))
                    tile_sum_C = logits_CK.sub_(new_max_C[:, None]).exp_().sum(dim=1)
                    sum_C = sum_C * torch.exp(max_C - new_max_C) + tile_sum_C
                    max_C = new_max_C
                lse_N[s:e] = max_C + sum_C.log()
                logprobs_N[s:e] = target_C - lse_N[s:e]
        ctx.save_for_backward(hidden_NH, weight_VH, bias_V, targets_N, lse_N)
        ctx.tiling = (inv_temperature, chunk_tokens, chunk_vocab)
        return logprobs_N

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_N: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        hidden_NH, weight_VH, bias_V, targets_N, lse_N = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        inv_t, c, k = ctx.tiling
        (n, h), v = hidden_NH.shape, weight_VH.shape[0]
        f32 = {"dtype": torch.float32, "device": hidden_NH.device}
        grad_h = torch.empty(hidden_NH.shape, dtype=hidden_NH.dtype, device=hidden_NH.device) if need_h else None
        grad_w = torch.zeros(weight_VH.shape, **f32) if need_w else None
        grad_b = torch.zeros(v, **f32) if need_b else None
        w_VH = weight_VH.to(hidden_NH.dtype)
        tile = _Tile(min(c, n), min(k, v), w_VH.device)
        grad_N = grad_N.float().contiguous()
        with torch.autocast(hidden_NH.device.type, enabled=False):
            for s in range(0, n, c):
                e = min(s + c, n)
                h_CH, y_C, go_C1 = hidden_NH[s:e], targets_N[s:e], grad_N[s:e, None] * inv_t
                acc_CH = torch.zeros((e - s, h), **f32) if need_h else None
                for v0 in range(0, v, k):
                    v1 = min(v0 + k, v)
                    # d logp_t / d logits_t = onehot(y_t) - softmax_t, times the upstream grad and 1/τ.
                    g_CK = tile.logits(h_CH, w_VH[v0:v1], _rows(bias_V, v0, v1), inv_t)
                    g_CK.sub_(lse_N[s:e, None]).exp_().mul_(-go_C1)
                    hit_C, col_C1 = _targets_in(y_C, v0, v1)
                    g_CK.scatter_add_(1, col_C1, torch.where(hit_C[:, None], go_C1, 0.0))
                    g_lp = g_CK.to(hidden_NH.dtype)  # no copy when fp32
                    if acc_CH is not None:
                        _accumulate_fp32(acc_CH, g_lp, w_VH[v0:v1])
                    if grad_w is not None:
                        _accumulate_fp32(grad_w[v0:v1], g_lp.t(), h_CH)
                    if grad_b is not None:
                        grad_b[v0:v1] += g_CK.sum(dim=0)
                if grad_h is not None:
                    grad_h[s:e] = acc_CH
        grad_w = grad_w.to(weight_VH.dtype) if grad_w is not None else None
        grad_b = grad_b.to(bias_V.dtype) if grad_b is not None else None
        return grad_h, grad_w, grad_b, None, None, None, None


class _Tile:
    """One reusable fp32 buffer for a C×K tile of logits: no fresh allocation (or page faults) per tile."""

    def __init__(self, rows: int, cols: int, device: torch.device) -> None:
        self.flat = torch.empty(rows * cols, dtype=torch.float32, device=device)

    def logits(
        self, h_CH: torch.Tensor, w_KH: torch.Tensor, bias_K: torch.Tensor | None, inv_temperature: float | torch.Tensor
    ) -> torch.Tensor:
        """(h · wᵀ + b) · inv_temperature as a contiguous fp32 [C, K] view of the buffer; h and w share a dtype.

        `inv_temperature` is one number, or a [C, 1] column with one per token."""
        out_CK = self.flat[: h_CH.shape[0] * w_KH.shape[0]].view(h_CH.shape[0], w_KH.shape[0])
        if h_CH.dtype == torch.float32:
            torch.mm(h_CH, w_KH.t(), out=out_CK)
        else:
            # Matmul in the input precision (tensor cores), log-sum-exp in fp32.
            out_CK.copy_(torch.mm(h_CH, w_KH.t()))
        if bias_K is not None:
            out_CK.add_(bias_K.float())
        if isinstance(inv_temperature, torch.Tensor) or inv_temperature != 1.0:
            out_CK.mul_(inv_temperature)
        return out_CK


def _rows(bias_V: torch.Tensor | None, v0: int, v1: int) -> torch.Tensor | None:
    return None if bias_V is None else bias_V[v0:v1]


def _targets_in(y_C: torch.Tensor, v0: int, v1: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Which targets fall in vocabulary tile [v0, v1), and their column in it (clamped when outside)."""
    hit_C = (y_C >= v0) & (y_C < v1)
    return hit_C, (y_C - v0).clamp(0, v1 - v0 - 1)[:, None]


def _accumulate_fp32(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """acc += a @ b (a and b share a dtype) into an fp32 accumulator, without a temporary where possible."""
    if a.dtype == torch.float32:
        acc.addmm_(a, b)
    elif acc.is_cuda and _cuda_addmm_out_dtype(acc.device):
        torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
    else:
        acc += torch.mm(a, b).float()


@functools.cache
def _cuda_addmm_out_dtype(device: torch.device) -> bool:
    # torch.addmm(..., out_dtype=float32) with bf16/fp16 operands: torch >= 2.8 on sm80+ (as Liger gates it).
    # A TorchVersion compares as a version ("2.13" >= "2.8"), not as the string it also is.
    new_enough = torch.torch_version.TorchVersion(torch.__version__) >= (2, 8)
    return new_enough and torch.cuda.get_device_capability(device)[0] >= 8


def _resolve_impl(impl: LogprobImpl, hidden_NH: torch.Tensor) -> str:
    if impl == "auto":
        return "liger" if liger_usable(hidden_NH) else "chunked"
    if impl == "liger" and not liger_usable(hidden_NH):
        raise RuntimeError(
            "impl='liger' needs a CUDA tensor and liger-kernel with the reduction='none' gradient fix "
            "(linkedin/Liger-Kernel#1298); install `hillclimb[gpu]` with a recent liger-kernel or use impl='chunked'"
        )
    if impl not in ("chunked", "liger", "naive"):
        raise ValueError(f"unknown impl {impl!r}; known: auto, chunked, liger, naive")
    return impl


@functools.cache
def _liger_function() -> Any | None:
    """Liger's fused linear CE Function if importable and carrying the per-token gradient fix, else None."""
    try:
        from liger_kernel.ops import fused_linear_cross_entropy as flce
    except Exception:  # not installed, or no triton / no GPU build: fall back to the chunked path
        return None
    params = inspect.signature(flce.fused_linear_cross_entropy_forward).parameters
    if "token_grad_output" not in params or "accum_dtype" not in params:
        return None
    return flce.LigerFusedLinearCrossEntropyFunction


def liger_available() -> bool:
    """True if the fused Liger path can be used (installed, and new enough to be correct)."""
    return _liger_function() is not None


def liger_usable(hidden: torch.Tensor) -> bool:
    """True if Liger's kernel can take these states: on CUDA, with a correct Liger installed."""
    return hidden.is_cuda and liger_available()


def _liger_token_logprobs(
    h_NH: torch.Tensor, weight_VH: torch.Tensor, y_N: torch.Tensor, bias_V: torch.Tensor | None, temperature: float
) -> torch.Tensor:
    fn = _liger_function()
    assert fn is not None
    if temperature != 1.0:  # (h·Wᵀ + b)/τ == (h/τ)·Wᵀ + b/τ; Liger has no temperature argument
        h_NH = h_NH / temperature
        bias_V = bias_V / temperature if bias_V is not None else None
    # Positional: input, weight, target, bias, ce_weight, ignore_index, lse_square_scale,
    # label_smoothing, reduction, softcap, return_z_loss, accum_dtype.
    out = fn.apply(h_NH, weight_VH, y_N, bias_V, None, -100, 0.0, 0.0, "none", None, False, torch.float32)
    return -out[0].float()
