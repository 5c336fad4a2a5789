"""Chunked target log-probs against the naive full-logits reference, and the Liger guard."""

from __future__ import annotations

import math

import pytest
import torch

from trainers.losses import ChunkedTargetLogprobs, liger_available, naive_token_logprobs, token_logprobs
from trainers.losses import logprobs as logprobs_module

B, T, H, V = 2, 9, 12, 37  # 18 tokens: chunk sizes 4 and 7 leave a ragged last chunk


def _case(dtype: torch.dtype = torch.float32, bias: bool = True, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=gen).to(dtype).requires_grad_()
    weight = (0.5 * torch.randn(V, H, generator=gen)).to(dtype).requires_grad_()
    bias_v = torch.randn(V, generator=gen).to(dtype).requires_grad_() if bias else None
    targets = torch.randint(0, V, (B, T), generator=gen)
    upstream = torch.randn(B, T, generator=gen)  # a non-uniform upstream gradient, as GRPO sends
    return hidden, weight, bias_v, targets, upstream


def _value_and_grads(impl: str, chunk: int, hidden, weight, bias_v, targets, upstream, temperature=1.0, vocab=8):
    out = token_logprobs(
        hidden, weight, targets, bias_v, temperature=temperature, chunk_tokens=chunk, chunk_vocab=vocab, impl=impl
    )
    params = [p for p in (hidden, weight, bias_v) if p is not None]
    grads = torch.autograd.grad((out * upstream).sum(), params)
    return out, grads


def test_hand_computed_two_token_vocab_three() -> None:
    # H = 1, weight = [[0],[1],[2]], hidden = [[1],[2]] → logits row 0 = [0,1,2], row 1 = [0,2,4].
    # logsumexp([0,1,2]) = ln(1 + e + e²) = 2.407606; target 2 → 2 - 2.407606 = -0.407606
    # logsumexp([0,2,4]) = ln(1 + e² + e⁴) = 4.142931; target 0 → 0 - 4.142931 = -4.142931
    hidden = torch.tensor([[1.0], [2.0]])
    weight = torch.tensor([[0.0], [1.0], [2.0]])
    out = token_logprobs(hidden, weight, torch.tensor([2, 0]), chunk_tokens=1, impl="chunked")
    expected = torch.tensor(
        [2 - math.log(1 + math.e + math.e**2), -math.log(1 + math.e**2 + math.e**4)], dtype=torch.float32
    )
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("chunk", "vocab"), [(1, 37), (4, 8), (7, 5), (18, 1), (1000, 1000), (4, 36)])
def test_chunked_matches_naive_values_and_grads(chunk: int, vocab: int) -> None:
    # 18 tokens × V = 37: token chunks 4 and 7 and vocabulary tiles 8, 5 and 36 all leave ragged last tiles.
    case = _case()
    ref, ref_grads = _value_and_grads("naive", chunk, *case)
    out, grads = _value_and_grads("chunked", chunk, *case, vocab=vocab)
    assert out.dtype == torch.float32 and out.shape == (B, T)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for got, want in zip(grads, ref_grads, strict=True):  # hidden, weight, bias
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_temperature_scales_logits_in_values_and_grads() -> None:
    case = _case(seed=1)
    ref, ref_grads = _value_and_grads("naive", 5, *case, temperature=0.7)
    out, grads = _value_and_grads("chunked", 5, *case, temperature=0.7)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    # And temperature really matters: at τ = 1 the values differ by far more than the tolerance.
    assert (token_logprobs(case[0], case[1], case[3], case[2], impl="chunked") - out).abs().max() > 0.1


def test_bf16_inputs_accumulate_in_fp32_within_tolerance() -> None:
    hidden, weight, bias_v, targets, upstream = _case(dtype=torch.bfloat16, seed=2)
    out, grads = _value_and_grads("chunked", 4, hidden, weight, bias_v, targets, upstream)
    # Reference: the same bf16 numbers, upcast, computed entirely in fp32.
    up = [t.detach().float().requires_grad_() for t in (hidden, weight, bias_v)]
    ref, ref_grads = _value_and_grads("naive", 4, *up, targets, upstream)
    assert out.dtype == torch.float32 and grads[0].dtype == torch.bfloat16 and grads[1].dtype == torch.bfloat16
    # bf16 keeps 8 mantissa bits: logits up to ~9 round by up to ~0.02; measured here max 0.007.
    torch.testing.assert_close(out, ref, atol=0.03, rtol=0)
    for got, want in zip(grads, ref_grads, strict=True):
        assert (got.float() - want).norm() / want.norm() < 0.01


def test_non_contiguous_hidden_and_no_bias() -> None:
    hidden, weight, _, targets, upstream = _case(bias=False, seed=3)
    full = torch.randn(B, T + 1, H, requires_grad=True)
    sliced = full[:, :-1]  # what the learner passes: the last position predicts nothing
    out = token_logprobs(sliced, weight, targets, chunk_tokens=5, impl="chunked")
    ref = naive_token_logprobs(sliced.reshape(-1, H), weight, targets.reshape(-1)).reshape(B, T)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    (grad_full,) = torch.autograd.grad((out * upstream).sum(), [full])
    assert torch.equal(grad_full[:, -1], torch.zeros(B, H))  # the unused last position gets no gradient


def test_no_tokens_gives_empty_logprobs_and_zero_grads() -> None:
    weight = torch.randn(V, H, requires_grad=True)
    hidden = torch.randn(0, H, requires_grad=True)
    out = token_logprobs(hidden, weight, torch.zeros(0, dtype=torch.long), impl="chunked")
    assert out.shape == (0,)
    (grad_w,) = torch.autograd.grad(out.sum(), [weight], allow_unused=False)
    assert torch.equal(grad_w, torch.zeros(V, H))


def test_frozen_head_gets_no_grad_but_hidden_does() -> None:
    hidden, weight, _, targets, upstream = _case(bias=False, seed=4)
    weight = weight.detach()
    out = token_logprobs(hidden, weight, targets, chunk_tokens=3, impl="chunked")
    (grad_h,) = torch.autograd.grad((out * upstream).sum(), [hidden])
    ref = naive_token_logprobs(hidden, weight, targets)
    (ref_h,) = torch.autograd.grad((ref * upstream).sum(), [hidden])
    torch.testing.assert_close(grad_h, ref_h, atol=1e-5, rtol=1e-4)


def test_auto_on_cpu_is_the_chunked_path_bit_for_bit() -> None:
    hidden, weight, bias_v, targets, _ = _case(seed=5)
    auto = token_logprobs(hidden, weight, targets, bias_v, chunk_tokens=4, chunk_vocab=32768, impl="auto")
    direct = ChunkedTargetLogprobs.apply(hidden.reshape(-1, H), weight, bias_v, targets.reshape(-1), 1.0, 4, 32768)
    assert torch.equal(auto, direct.reshape(B, T))


def test_liger_on_cpu_is_refused_with_advice() -> None:
    hidden, weight, _, targets, _ = _case(bias=False)
    with pytest.raises(RuntimeError, match="impl='chunked'"):
        token_logprobs(hidden, weight, targets, impl="liger")


def test_bad_arguments_raise() -> None:
    hidden, weight, _, targets, _ = _case(bias=False)
    with pytest.raises(ValueError, match="disagree"):
        token_logprobs(hidden, weight, targets[:, :-1])
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(hidden, weight, targets, temperature=0.0)
    with pytest.raises(ValueError, match="unknown impl"):
        token_logprobs(hidden, weight, targets, impl="fast")  # type: ignore[arg-type]


class _FakeLigerFunction:
    """Stands in for LigerFusedLinearCrossEntropyFunction: per-token CE with reduction='none'."""

    calls: list[tuple] = []

    @staticmethod
    def apply(h, w, y, b, ce_weight, ignore_index, lse_sq, smoothing, reduction, softcap, z_loss, accum_dtype):
        _FakeLigerFunction.calls.append((reduction, accum_dtype))
        logits = torch.nn.functional.linear(h, w, b).float()
        return (torch.nn.functional.cross_entropy(logits, y, reduction="none"), None, None, None)


def test_liger_wrapper_sign_temperature_and_bias(monkeypatch: pytest.MonkeyPatch) -> None:
    # Liger returns CE = -log p and has no temperature: we pass hidden/τ and bias/τ and negate.
    monkeypatch.setattr(logprobs_module, "_liger_function", lambda: _FakeLigerFunction)
    hidden, weight, bias_v, targets, _ = _case(seed=6)
    got = logprobs_module._liger_token_logprobs(hidden.reshape(-1, H), weight, targets.reshape(-1), bias_v, 0.5)
    want = naive_token_logprobs(hidden.reshape(-1, H), weight, targets.reshape(-1), bias_v, temperature=0.5)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert _FakeLigerFunction.calls[-1] == ("none", torch.float32)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("impl", ["chunked", "liger"])
def test_cuda_bf16_paths_match_naive(impl: str) -> None:
    if impl == "liger" and not liger_available():
        pytest.skip("liger-kernel with the reduction='none' gradient fix is not installed")
    hidden, weight, bias_v, targets, upstream = (
        t.cuda().detach().requires_grad_(t.requires_grad) if t is not None else None
        for t in _case(dtype=torch.bfloat16, seed=7)
    )
    out, grads = _value_and_grads(impl, 4, hidden, weight, bias_v, targets, upstream)
    up = [t.detach().float().requires_grad_() for t in (hidden, weight, bias_v)]
    ref, ref_grads = _value_and_grads("naive", 4, *up, targets, upstream)
    torch.testing.assert_close(out, ref, atol=0.03, rtol=0)
    for got, want in zip(grads, ref_grads, strict=True):
        assert (got.float() - want).norm() / want.norm() < 0.01


def test_fp32_head_with_bf16_states_gives_an_fp32_head_gradient() -> None:
    # Mixed precision: master weights fp32, activations bf16. The head is cast to bf16 once for the
    # matmuls; its gradient comes back fp32, close to the all-fp32 reference on the same numbers.
    hidden, _, _, targets, upstream = _case(dtype=torch.bfloat16, bias=False, seed=8)
    weight = (0.5 * torch.randn(V, H, generator=torch.Generator().manual_seed(9))).requires_grad_()
    out = token_logprobs(hidden, weight, targets, chunk_tokens=5, impl="chunked")
    grad_h, grad_w = torch.autograd.grad((out * upstream).sum(), [hidden, weight])
    assert grad_h.dtype == torch.bfloat16 and grad_w.dtype == torch.float32
    h32 = hidden.detach().float().requires_grad_()
    w32 = weight.detach().bfloat16().float().requires_grad_()
    ref = naive_token_logprobs(h32, w32, targets)
    ref_h, ref_w = torch.autograd.grad((ref * upstream).sum(), [h32, w32])
    torch.testing.assert_close(out, ref, atol=0.03, rtol=0)
    assert (grad_w - ref_w).norm() / ref_w.norm() < 0.01
    assert (grad_h.float() - ref_h).norm() / ref_h.norm() < 0.01


@pytest.mark.parametrize(("version", "usable"), [("2.13.0+cu128", True), ("2.8.0", True), ("2.7.1", False)])
def test_the_fp32_accumulating_addmm_is_gated_by_version_not_by_string_order(
    monkeypatch: pytest.MonkeyPatch, version: str, usable: bool
) -> None:
    # As strings "2.13.0" < "2.8". torch's own __version__ is a TorchVersion, which compares as a
    # version; set as a plain string here, the gate must still read it as one.
    monkeypatch.setattr(torch, "__version__", version)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (9, 0))
    assert logprobs_module._cuda_addmm_out_dtype.__wrapped__(torch.device("cuda", 0)) is usable
