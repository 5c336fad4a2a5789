"""The fused LM head + per-token loss against autograd through full logits, and its guards."""

from __future__ import annotations

import pytest
import torch

from trainers.losses import fused_token_loss

N, H, V = 19, 12, 37  # chunks of 1, 4 and 7 tokens leave a ragged last chunk


def _case(dtype: torch.dtype = torch.float32, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, generator=gen).to(dtype).requires_grad_()
    weight = (0.5 * torch.randn(V, H, generator=gen)).to(dtype).requires_grad_()
    bias = torch.randn(V, generator=gen).to(dtype).requires_grad_()
    targets = torch.randint(0, V, (N,), generator=gen)
    inv_temperature = 0.5 + torch.rand(N, generator=gen)
    coef = torch.randn(N, generator=gen)
    return hidden, weight, bias, targets, inv_temperature, coef


def _token_loss(coef: torch.Tensor):
    """A separable, non-linear loss whose per-token gradient differs from token to token (as GRPO's does)."""

    def loss(logp_C: torch.Tensor, chunk: slice) -> torch.Tensor:
        return (coef[chunk] * torch.exp(logp_C) + 0.1 * logp_C**2).sum()

    return loss


def _reference(hidden, weight, bias, targets, inv_temperature, coef):
    logits = (hidden.float() @ weight.float().T + bias.float()) * inv_temperature[:, None]
    logp = torch.log_softmax(logits, dim=-1).gather(1, targets[:, None]).squeeze(1)
    return _token_loss(coef)(logp, slice(None)), logp


@pytest.mark.parametrize("chunk", [1, 4, 7, N, 1000])
def test_values_and_gradients_match_full_logits(chunk: int) -> None:
    case = _case()
    hidden, weight, bias, targets, inv_t, coef = case
    loss, logp = fused_token_loss(
        hidden, weight, targets, _token_loss(coef), bias, inv_temperature_N=inv_t, max_tile_logits=chunk * V
    )
    ref_loss, ref_logp = _reference(*case)
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logp, ref_logp, atol=1e-5, rtol=1e-5)
    assert not logp.requires_grad  # for metrics only
    # An upstream gradient other than 1 (the learner scales by micro-batch weight and world size).
    got = torch.autograd.grad(2.5 * loss, [hidden, weight, bias])
    want = torch.autograd.grad(2.5 * ref_loss, [hidden, weight, bias])
    for g, w in zip(got, want, strict=True):
        assert g.abs().max() > 1e-3  # a real gradient
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)


def test_strided_hidden_states_get_their_gradient() -> None:
    # States read through a transpose (strides (1, N)): the gradient must still land row by row.
    _, weight, bias, targets, inv_t, coef = _case(seed=2)
    base = torch.randn(H, N, generator=torch.Generator().manual_seed(5), requires_grad=True)
    loss, _ = fused_token_loss(base.t(), weight, targets, _token_loss(coef), bias, max_tile_logits=4 * V)
    ref, _ = _reference(base.t(), weight, bias, targets, torch.ones(N), coef)
    torch.testing.assert_close(
        torch.autograd.grad(loss, base)[0], torch.autograd.grad(ref, base)[0], atol=1e-5, rtol=1e-4
    )


def test_tile_budget_smaller_than_one_row_still_takes_one_token_a_chunk() -> None:
    hidden, weight, bias, targets, inv_t, coef = _case(seed=1)
    loss, _ = fused_token_loss(hidden, weight, targets, _token_loss(coef), bias, max_tile_logits=1)
    ref, _ = _reference(hidden, weight, bias, targets, torch.ones(N), coef)
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)


def test_token_loss_sees_each_token_once_in_order() -> None:
    hidden, weight, _, targets, _, _ = _case()
    seen: list[tuple[int, int, bool]] = []

    def loss(logp_C: torch.Tensor, chunk: slice) -> torch.Tensor:
        seen.append((chunk.start, chunk.stop, logp_C.requires_grad))
        return -logp_C.sum()

    fused_token_loss(hidden, weight, targets, loss, max_tile_logits=7 * V)
    assert seen == [(0, 7, True), (7, 14, True), (14, 19, True)]


def test_no_gradients_are_computed_without_grad_mode() -> None:
    hidden, weight, bias, targets, inv_t, coef = _case()
    calls: list[bool] = []

    def loss(logp_C: torch.Tensor, chunk: slice) -> torch.Tensor:
        calls.append(logp_C.requires_grad)
        return _token_loss(coef)(logp_C, chunk)

    with torch.no_grad():
        value, logp = fused_token_loss(hidden, weight, targets, loss, bias, inv_temperature_N=inv_t)
    ref, ref_logp = _reference(hidden, weight, bias, targets, inv_t, coef)
    torch.testing.assert_close(value, ref.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logp, ref_logp.detach(), atol=1e-5, rtol=1e-5)
    assert calls == [False] and not value.requires_grad


def test_only_inputs_that_require_grad_get_one() -> None:
    hidden, weight, bias, targets, _, coef = _case()
    frozen_head = weight.detach()
    loss, _ = fused_token_loss(hidden, frozen_head, targets, _token_loss(coef))
    (g_hidden,) = torch.autograd.grad(loss, [hidden])
    ref, _ = _reference(hidden, frozen_head, torch.zeros(V), targets, torch.ones(N), coef)
    torch.testing.assert_close(g_hidden, torch.autograd.grad(ref, [hidden])[0], atol=1e-5, rtol=1e-4)


def test_bf16_hidden_states_with_an_fp32_head() -> None:
    # Autocast on GPU hands bf16 states to an fp32 head: matmuls in bf16, softmax and accumulators in fp32.
    hidden, weight, bias, targets, inv_t, coef = _case()
    h16 = hidden.detach().to(torch.bfloat16).requires_grad_()
    loss, logp = fused_token_loss(h16, weight, targets, _token_loss(coef), bias, inv_temperature_N=inv_t)
    g_h, g_w = torch.autograd.grad(loss, [h16, weight])
    assert logp.dtype == torch.float32 and g_h.dtype == torch.bfloat16 and g_w.dtype == torch.float32
    ref, ref_logp = _reference(h16.float(), weight, bias, targets, inv_t, coef)
    torch.testing.assert_close(logp, ref_logp, atol=0.1, rtol=0.05)
    torch.testing.assert_close(loss, ref, atol=0.1, rtol=0.05)


def test_no_tokens_gives_zero_loss_and_zero_gradients() -> None:
    _, weight, _, _, _, _ = _case()
    hidden = torch.zeros(0, H, requires_grad=True)
    loss, logp = fused_token_loss(hidden, weight, torch.zeros(0, dtype=torch.long), lambda lp, c: -lp.sum())
    g_h, g_w = torch.autograd.grad(loss, [hidden, weight])
    assert loss.item() == 0.0 and logp.shape == (0,) and g_h.shape == (0, H) and g_w.abs().sum() == 0


def test_backward_twice_is_refused_not_silently_wrong() -> None:
    hidden, weight, _, targets, _, coef = _case()
    loss, _ = fused_token_loss(hidden, weight, targets, _token_loss(coef))
    torch.autograd.grad(loss, [hidden, weight], retain_graph=True)
    with pytest.raises(RuntimeError, match="backward runs once"):
        torch.autograd.grad(loss, [hidden, weight])


def test_bad_input_is_named() -> None:
    hidden, weight, _, targets, _, _ = _case()
    per_token = lambda lp, c: -lp  # noqa: E731  (not summed: one loss per token)
    with pytest.raises(ValueError, match="0-dim loss"):
        fused_token_loss(hidden, weight, targets, per_token)
    with pytest.raises(ValueError, match=r"must be \[N, H\]"):
        fused_token_loss(hidden[None], weight, targets[None], lambda lp, c: lp.sum())
    with pytest.raises(ValueError, match="does not match hidden size"):
        fused_token_loss(hidden, weight[:, :-1], targets, lambda lp, c: lp.sum())
    with pytest.raises(ValueError, match="one entry per token"):
        fused_token_loss(hidden, weight, targets, lambda lp, c: lp.sum(), inv_temperature_N=torch.ones(3))
    with pytest.raises(ValueError, match="max_tile_logits"):
        fused_token_loss(hidden, weight, targets, lambda lp, c: lp.sum(), max_tile_logits=0)
