"""ECHO's advantage form: on-policy the CE form's gradient, off-policy the GRPO surrogate's ratio and clip."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from hillclimb.config.models import TinyModelConfig
from trainers.losses import ConstantLambda, EchoConfig, GRPOConfig, LossBatch, LossConfig, loss_from_hidden
from trainers.losses import loss_from_logprobs as from_logprobs
from trainers.models.head import lm_head
from trainers.models.load import load_model
from trainers.roles import Role

P, A, E, S = Role.PROMPT, Role.ACTION, Role.ENV, Role.SCAFFOLD
F64 = torch.float64
LAM = 0.05
TINY = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_positions=64)


def _config(form: str, lam: float = LAM, impl: str = "fused", temperature: float = 1.0) -> LossConfig:
    # Tiles of 4 tokens × 256 vocabulary rows (the tiny model's V): several chunks per batch.
    return LossConfig(
        grpo=GRPOConfig(clip_eps_low=0.2, clip_eps_high=0.2),
        echo=EchoConfig(schedule=ConstantLambda(value=lam), form=form),
        temperature=temperature,
        chunk_tokens=4,
        chunk_vocab=256,
        logprob_impl=impl,
    )


def test_the_advantage_form_by_hand() -> None:
    # One episode, A = +1: [ACT p=1/2, ENV p=1/4, ENV p=1/8, ENV p=1/2, ACT p=1/2, SCAFFOLD]; λ = 0.1, ε = 0.2.
    roles = torch.tensor([[A, E, E, E, A, S]])
    logp = torch.log(torch.tensor([[0.5, 0.25, 0.125, 0.5, 0.5, 1e-6]], dtype=F64))
    batch = LossBatch(targets_BT=torch.zeros(1, 6, dtype=torch.long), roles_BT=roles, advantages_B=torch.ones(1))

    def run(form: str, old: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
        lp = logp.clone().requires_grad_()
        b = replace(batch, env_old_logprobs_BT=old)
        loss, metrics = from_logprobs(lp, b, _config(form, lam=0.1), step=0)
        return loss, torch.autograd.grad(loss, [lp])[0], metrics

    # On-policy. CE form: 0.1 · (2 + 3 + 1) ln2 / 3 = 0.2 ln2 for ENV; GRPO -1; d/dlogp(ENV) = -0.1/3.
    # Advantage form: -(0.1 · 1 · 3)/3 = -0.1 for ENV, the same d/dlogp(ENV) = -0.1/3.
    ce_loss, ce_grad, ce_m = run("cross_entropy")
    adv_loss, adv_grad, adv_m = run("advantage")
    third = 0.1 / 3
    want = torch.tensor([[-0.5, -third, -third, -third, -0.5, 0.0]], dtype=F64)
    torch.testing.assert_close(ce_grad, want)
    torch.testing.assert_close(adv_grad, want)
    assert ce_loss.item() == pytest.approx(-1 + 0.2 * math.log(2)) and adv_loss.item() == pytest.approx(-1.1)
    # The CE is logged in both forms; echo/loss is the term the form adds.
    assert adv_m["echo/ce"].item() == pytest.approx(ce_m["echo/ce"].item()) == pytest.approx(2 * math.log(2))
    assert adv_m["echo/loss"].item() == pytest.approx(-0.1)

    # Off-policy: old log-probs give ENV ratios r = 0.5, 1.1, 1.5. With λ > 0, -min(r·λ, clip(r)·λ):
    # r = 0.5 is below 1 - ε but min keeps r·λ (a positive advantage is never clipped from below), so
    # d/dlogp = -0.1 · 0.5/3; r = 1.1 is inside: -0.1 · 1.1/3; r = 1.5 is above 1 + ε: clipped, 0.
    # ENV term: -0.1 · (0.5 + 1.1 + 1.2)/3 = -0.28/3. The CE form ignores the old log-probs.
    ratios = torch.tensor([[1.0, 0.5, 1.1, 1.5, 1.0, 1.0]], dtype=F64)
    old = logp - ratios.log()
    adv_loss, adv_grad, _ = run("advantage", old)
    want_off = torch.tensor([[-0.5, -0.05 / 3, -0.11 / 3, 0.0, -0.5, 0.0]], dtype=F64)
    torch.testing.assert_close(adv_grad, want_off)
    assert adv_loss.item() == pytest.approx(-1 - 0.28 / 3)
    torch.testing.assert_close(run("cross_entropy", old)[1], want)


def _tiny_batch(gen: torch.Generator) -> tuple[torch.Tensor, LossBatch]:
    # Three episodes of 14 tokens; episode 2's ENV tokens are filtered out (its actions still train).
    roles = torch.tensor(
        [
            [P, P, A, A, E, E, E, S, A, A, E, E, A, E],
            [P, A, E, E, S, A, A, A, E, E, S, E, E, A],
            [P, P, P, A, A, E, E, E, E, A, S, E, A, A],
        ]
    )
    ids = torch.randint(0, 256, roles.shape, generator=gen)
    batch = LossBatch.from_tokens(
        ids, roles, advantages_B=torch.tensor([0.9, -0.6, 1.3]), env_keep_B=torch.tensor([True, True, False])
    )
    return ids, batch  # sampling_logprobs_BT None: ACTION ratios are exactly 1 too


def _grads(model, ids: torch.Tensor, batch: LossBatch, config: LossConfig) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    hidden = model.base_model(input_ids=ids).last_hidden_state[:, :-1]
    weight, bias = lm_head(model)
    loss, _ = loss_from_hidden(hidden, weight, batch, config, step=0, lm_head_bias_V=bias)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("impl", ["fused", "chunked", "naive"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_on_policy_the_advantage_form_has_the_cross_entropy_forms_gradient(impl: str, temperature: float) -> None:
    model, _ = load_model(TINY)
    ids, batch = _tiny_batch(torch.Generator().manual_seed(0))
    ce_loss, ce = _grads(model, ids, batch, _config("cross_entropy", impl=impl, temperature=temperature))
    adv_loss, adv = _grads(model, ids, batch, _config("advantage", impl=impl, temperature=temperature))
    _, grpo = _grads(model, ids, batch, _config("advantage", lam=0.0, impl=impl, temperature=temperature))
    for name_param, g_ce, g_adv in zip(model.named_parameters(), ce, adv, strict=True):
        assert torch.allclose(g_adv, g_ce, rtol=1e-5, atol=1e-8), name_param[0]
    # Not vacuous: the ENV term moves the gradient, and the values differ (-λ against λ · CE).
    assert any(not torch.allclose(g, g0, rtol=1e-3, atol=1e-6) for g, g0 in zip(adv, grpo, strict=True))
    assert not torch.allclose(ce_loss, adv_loss)


def test_lambda_zero_in_the_advantage_form_is_plain_grpo_bit_for_bit() -> None:
    model, _ = load_model(TINY)
    ids, batch = _tiny_batch(torch.Generator().manual_seed(1))
    results = [_grads(model, ids, batch, _config(form, lam=0.0)) for form in ("cross_entropy", "advantage")]
    (loss_ce, grads_ce), (loss_adv, grads_adv) = results
    assert torch.equal(loss_ce, loss_adv) and all(torch.equal(a, b) for a, b in zip(grads_ce, grads_adv, strict=True))


@pytest.mark.parametrize("impl", ["fused", "naive"])
def test_after_an_optimizer_step_the_advantage_forms_env_gradient_is_ratio_scaled_and_clipped(impl: str) -> None:
    model, _ = load_model(TINY)
    ids, batch = _tiny_batch(torch.Generator().manual_seed(2))
    env_BT = (batch.roles_BT == Role.ENV) & batch.env_keep_B[:, None]
    with torch.no_grad():
        old_BT = _full_logits_logprobs(model, ids, batch)
    # One plain SGD step on the CE form: every ENV token grows likelier (r ≈ 1.16 to 1.40 here),
    # about half of them beyond the clip range.
    _grads(model, ids, batch, _config("cross_entropy", lam=1.0, impl=impl))
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.04 * p.grad
        ratio_BT = torch.exp(_full_logits_logprobs(model, ids, batch) - old_BT)
    r_N = ratio_BT[env_BT]
    assert (r_N > 1.2).any() and ((r_N - 1).abs() > 0.02).logical_and(r_N <= 1.2).any(), r_N
    stale = replace(batch, env_old_logprobs_BT=old_BT)

    _, adv = _grads(model, ids, stale, _config("advantage", impl=impl))
    _, ce = _grads(model, ids, stale, _config("cross_entropy", impl=impl))
    # The documented behaviour: the CE form's per-ENV-token gradient times r where r ≤ 1 + ε_high,
    # 0 above; built as GRPO plus λ · CE whose tokens carry those (detached) weights.
    weight_BT = torch.where(env_BT & (ratio_BT <= 1.2), ratio_BT, torch.zeros_like(ratio_BT))
    want = _weighted_ce_gradient(model, ids, stale, weight_BT)
    for (name, _), g_adv, g_want in zip(model.named_parameters(), adv, want, strict=True):
        assert torch.allclose(g_adv, g_want, rtol=1e-4, atol=1e-7), name
    assert any(not torch.allclose(a, c, rtol=1e-3, atol=1e-6) for a, c in zip(adv, ce, strict=True))


def _full_logits_logprobs(model, ids: torch.Tensor, batch: LossBatch) -> torch.Tensor:
    """Log-prob of every target at temperature 1, from full logits: the reference."""
    hidden = model.base_model(input_ids=ids).last_hidden_state[:, :-1]
    weight, bias = lm_head(model)
    logits_BTV = torch.nn.functional.linear(hidden, weight, bias)
    return torch.log_softmax(logits_BTV, -1).gather(-1, batch.targets_BT[..., None])[..., 0]


def _weighted_ce_gradient(model, ids, batch: LossBatch, weight_BT: torch.Tensor) -> list[torch.Tensor]:
    """Parameter gradients of GRPO(ACTION) + λ · Σ_env w_t · (-logp_t) / n_env, by autograd on full logits."""
    model.zero_grad(set_to_none=True)
    logp_BT = _full_logits_logprobs(model, ids, batch)
    grpo_only, _ = from_logprobs(logp_BT, batch, _config("advantage", lam=0.0), step=0)
    n_env = float(((batch.roles_BT == Role.ENV) & batch.env_keep_B[:, None]).sum())
    (grpo_only - LAM * (weight_BT * logp_BT).sum() / n_env).backward()
    return [p.grad.clone() for p in model.parameters()]
