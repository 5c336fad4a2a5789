"""The total loss: GRPO + λ·CE by hand, λ = 0 bit-identical to GRPO, every LM-head path alike, the public API."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

import trainers.losses as losses
from trainers.losses import (
    ConstantLambda,
    EchoConfig,
    GRPOConfig,
    LossBatch,
    LossConfig,
    StepDecayLambda,
    fused_token_loss,
    grpo_loss,
    loss_from_hidden,
    loss_from_logprobs,
    token_logprobs,
)
from trainers.roles import Role

P, A, E, S, W = Role.PROMPT, Role.ACTION, Role.ENV, Role.SCAFFOLD, Role.WARNING
F64 = torch.float64
LN2 = math.log(2)


def _config(lam: float = 0.0, impl: str = "auto", **echo: object) -> LossConfig:
    # Tiles of 3 tokens × 23 vocabulary rows: every case below (V = 23) spans several chunks.
    return LossConfig(
        grpo=GRPOConfig(clip_eps_low=0.2, clip_eps_high=0.2),
        echo=EchoConfig(schedule=ConstantLambda(value=lam), **echo),
        chunk_tokens=3,
        chunk_vocab=23,
        logprob_impl=impl,
    )


def test_from_tokens_shifts_by_one() -> None:
    ids = torch.tensor([[10, 11, 12, 13]])
    roles = torch.tensor([[P, A, E, A]])
    sampled = torch.tensor([[0.0, -0.1, 0.0, -0.3]])
    batch = LossBatch.from_tokens(ids, roles, advantages_B=torch.ones(1), sampling_logprobs_BT=sampled)
    # Position 0 predicts token 11 (an ACTION, sampled at -0.1), position 2 predicts token 13 (ACTION, -0.3).
    assert batch.targets_BT.tolist() == [[11, 12, 13]]
    assert batch.roles_BT.tolist() == [[A, E, A]]
    torch.testing.assert_close(batch.sampling_logprobs_BT, torch.tensor([[-0.1, 0.0, -0.3]]))


def test_total_loss_by_hand() -> None:
    # One episode, A = +1, on-policy. Targets: [ACT p=1/2, ENV p=1/4, ENV p=1/8, ACT p=1/2, SCAFFOLD].
    # GRPO: ratio 1 on both action tokens → ℓ = -1 each → -2/2 = -1.
    # CE: (2 ln2 + 3 ln2)/2 = 2.5 ln2 = 1.732868; λ = 0.1 → loss = -1 + 0.1732868 = -0.8267132
    roles = torch.tensor([[A, E, E, A, S]])
    logp = torch.log(torch.tensor([[0.5, 0.25, 0.125, 0.5, 1e-6]], dtype=F64)).requires_grad_()
    batch = LossBatch(targets_BT=torch.zeros(1, 5, dtype=torch.long), roles_BT=roles, advantages_B=torch.ones(1))
    loss, m = loss_from_logprobs(logp, batch, _config(0.1), step=0)
    assert loss.item() == pytest.approx(-1 + 0.1 * 2.5 * LN2)
    assert m["grpo/loss"].item() == pytest.approx(-1.0)
    assert m["echo/ce"].item() == pytest.approx(2.5 * LN2)
    assert m["echo/loss"].item() == pytest.approx(0.25 * LN2)
    assert m["echo/lambda"].item() == pytest.approx(0.1)
    assert m["echo/n_env_tokens"].item() == 2 and m["grpo/n_action_tokens"].item() == 2
    # d/dlogp: action -A/2 = -0.5 each; env -λ/2 = -0.05 each; scaffold 0.
    (grad,) = torch.autograd.grad(loss, [logp])
    torch.testing.assert_close(grad, torch.tensor([[-0.5, -0.05, -0.05, -0.5, 0.0]], dtype=F64))


def test_verifier_free_is_lambda_times_ce_and_needs_no_rewards() -> None:
    # Same targets, no advantages: loss = 1.0 · 2.5 ln2 = 1.732868
    roles = torch.tensor([[A, E, E, A, S]])
    logp = torch.log(torch.tensor([[0.5, 0.25, 0.125, 0.5, 1e-6]], dtype=F64))
    batch = LossBatch(targets_BT=torch.zeros(1, 5, dtype=torch.long), roles_BT=roles)
    loss, m = loss_from_logprobs(logp, batch, _config(1.0, verifier_free=True), step=0)
    assert loss.item() == pytest.approx(2.5 * LN2) and "grpo/loss" not in m


def test_filtered_episode_keeps_its_actions_but_not_its_env_tokens() -> None:
    # Episode 1 is filtered: its ENV token (p = 1/1024) leaves the CE; its ACTION stays in GRPO.
    # CE = -ln(1/4) / 1 = 2 ln2; GRPO on-policy A = [1, 1] → (-1 - 1)/2 = -1; λ = 0.5 → -1 + ln2
    roles = torch.tensor([[A, E], [A, E]])
    logp = torch.log(torch.tensor([[0.5, 0.25], [0.5, 1 / 1024]], dtype=F64))
    batch = LossBatch(
        targets_BT=torch.zeros(2, 2, dtype=torch.long),
        roles_BT=roles,
        advantages_B=torch.ones(2, dtype=F64),
        env_keep_B=torch.tensor([True, False]),
    )
    loss, m = loss_from_logprobs(logp, batch, _config(0.5), step=0)
    assert loss.item() == pytest.approx(-1 + LN2) and m["grpo/n_action_tokens"].item() == 2


def _poisoned_case():
    # ENV targets hold -inf and NaN log-probs. 0 · CE would be NaN; λ = 0 must not even look.
    roles = torch.tensor([[P, A, E, A, E], [A, E, A, S, E]])
    logp = torch.tensor(
        [[0.0, -0.7, -math.inf, -1.2, float("nan")], [-0.3, float("nan"), -2.0, 0.0, -math.inf]], dtype=F64
    )
    old = torch.tensor([[0.0, -0.5, 0.0, -1.5, 0.0], [-0.4, 0.0, -1.0, 0.0, 0.0]], dtype=F64)
    batch = LossBatch(
        targets_BT=torch.zeros(2, 5, dtype=torch.long),
        roles_BT=roles,
        advantages_B=torch.tensor([0.7, -1.3], dtype=F64),
        sampling_logprobs_BT=old,
    )
    return logp, batch


def test_lambda_zero_is_bit_identical_to_grpo_from_logprobs() -> None:
    logp, batch = _poisoned_case()
    lp_echo = logp.clone().requires_grad_()
    lp_grpo = logp.clone().requires_grad_()
    loss_echo, _ = loss_from_logprobs(lp_echo, batch, _config(0.0), step=0)
    loss_grpo, _ = grpo_loss(lp_grpo, batch.sampling_logprobs_BT, batch.advantages_B, batch.roles_BT == Role.ACTION)
    (g_echo,) = torch.autograd.grad(loss_echo, [lp_echo])
    (g_grpo,) = torch.autograd.grad(loss_grpo, [lp_grpo])
    assert torch.isfinite(loss_echo)
    assert torch.equal(loss_echo, loss_grpo) and torch.equal(g_echo, g_grpo)
    # The poison is real: any λ != 0 reads the ENV targets and the loss turns inf/NaN.
    loss_tiny, _ = loss_from_logprobs(logp, batch, _config(1e-12), step=0)
    assert not torch.isfinite(loss_tiny)


def _hidden_case(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    b, t, h, v = 2, 11, 8, 23
    roles = torch.tensor([[P, P, A, A, E, E, E, S, A, A, E], [P, A, E, E, W, A, A, A, E, E, S]])
    hidden = torch.randn(b, t, h, generator=gen)
    batch = LossBatch(
        targets_BT=torch.randint(0, v, (b, t), generator=gen),
        roles_BT=roles,
        advantages_B=torch.tensor([0.9, -0.4]),
        sampling_logprobs_BT=-3.0 - torch.rand(b, t, generator=gen),
    )
    return hidden, torch.randn(v, h, generator=gen), batch


def _plain_grpo(impl: str, batch: LossBatch):
    """GRPO alone on ACTION targets, built by hand from the LM-head primitive `impl` uses."""
    action = batch.roles_BT == Role.ACTION

    def unfused(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        lp = token_logprobs(h[action], w, batch.targets_BT[action], chunk_tokens=3, impl="chunked")
        lp_BT = torch.zeros(action.shape).masked_scatter(action, lp)
        return grpo_loss(lp_BT, batch.sampling_logprobs_BT, batch.advantages_B, action)[0]

    def fused(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        adv_N, old_N = batch.advantages_B[action.nonzero()[:, 0]], batch.sampling_logprobs_BT[action]
        n = float(action.sum())

        def chunk_loss(lp_C: torch.Tensor, c: slice) -> torch.Tensor:
            everything = torch.ones(lp_C.shape[0], 1, dtype=torch.bool)
            return grpo_loss(lp_C[:, None], old_N[c, None], adv_N[c], everything, n_action_tokens=n)[0]

        scale = torch.ones(int(n))  # the objective passes ACTION's 1/temperature per token
        return fused_token_loss(
            h[action], w, batch.targets_BT[action], chunk_loss, inv_temperature_N=scale, max_tile_logits=3 * 23
        )[0]

    return fused if impl == "fused" else unfused


@pytest.mark.parametrize("form", ["cross_entropy", "advantage"])
@pytest.mark.parametrize("impl", ["fused", "chunked"])
def test_lambda_zero_is_bit_identical_to_grpo_from_hidden_states(impl: str, form: str) -> None:
    hidden, weight, batch = _hidden_case()
    # Poison the hidden states of ENV positions: with λ = 0 they must never reach the LM head.
    hidden = torch.where((batch.roles_BT == Role.ENV)[..., None], torch.tensor(float("nan")), hidden)
    # A schedule that has decayed to exactly 0 by step 7 is the same thing as λ = 0.
    decayed = _config(0.0).model_copy(
        update={"echo": EchoConfig(schedule=StepDecayLambda(start=0.05, milestones=(5,), factor=0.0), form=form)}
    )
    results = []
    for fn in (
        _plain_grpo(impl, batch),
        lambda h, w: loss_from_hidden(h, w, batch, _config(0.0, impl=impl, form=form), step=0)[0],
        lambda h, w: loss_from_hidden(h, w, batch, decayed.model_copy(update={"logprob_impl": impl}), step=7)[0],
    ):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        loss = fn(h, w)
        results.append((loss, *torch.autograd.grad(loss, [h, w])))
    ref = results[0]
    assert torch.isfinite(ref[0]) and torch.isfinite(ref[1]).all() and torch.isfinite(ref[2]).all()
    for other in results[1:]:
        assert all(torch.equal(x, y) for x, y in zip(ref, other, strict=True))


def test_loss_from_hidden_matches_naive_logits_path() -> None:
    hidden, weight, batch = _hidden_case(seed=1)
    cfg = _config(0.05)
    h1, w1 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss, m = loss_from_hidden(h1, w1, batch, cfg, step=0)
    g1 = torch.autograd.grad(loss, [h1, w1])
    # Reference: full [B,T,V] logits → log_softmax → gather, then the same loss.
    h2, w2 = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    lp = torch.log_softmax(h2 @ w2.T, dim=-1).gather(-1, batch.targets_BT[..., None]).squeeze(-1)
    ref, _ = loss_from_logprobs(lp, batch, cfg, step=0)
    g2 = torch.autograd.grad(ref, [h2, w2])
    torch.testing.assert_close(loss, ref, atol=1e-6, rtol=1e-5)
    for x, y in zip(g1, g2, strict=True):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-5)
    # Row 0 [P,P,A,A,E,E,E,S,A,A,E]: 4 A, 4 E; row 1 [P,A,E,E,W,A,A,A,E,E,S]: 4 A, 4 E.
    assert m["echo/n_env_tokens"].item() == 8 and m["grpo/n_action_tokens"].item() == 8


@pytest.mark.parametrize(
    "variant",
    [
        "kl",
        "verifier_free",
        "filtered",
        "accumulating",
        "bias_and_temperature",
        "off_policy_clipped",
        "advantage_form_off_policy",
    ],
)
def test_fused_path_equals_the_naive_logits_path(variant: str) -> None:
    # Every option of the objective through the fused head (tiles of 3 tokens) against full logits.
    hidden, weight, batch = _hidden_case(seed=4)
    cfg, bias = _config(0.2), None
    if variant == "kl":
        cfg = cfg.model_copy(update={"grpo": GRPOConfig(kl_coef=0.1)})
        batch = replace(batch, ref_logprobs_BT=batch.sampling_logprobs_BT + 0.5)
    elif variant == "verifier_free":
        cfg = _config(0.2, verifier_free=True)
        batch = replace(batch, advantages_B=None)
    elif variant == "filtered":
        batch = replace(batch, env_keep_B=torch.tensor([False, True]))
    elif variant == "accumulating":  # normalisers of the whole optimizer step, not of this micro-batch
        batch = replace(batch, n_action_tokens=21.0, n_env_tokens=13.0)
    elif variant == "bias_and_temperature":
        cfg, bias = cfg.model_copy(update={"temperature": 0.7}), torch.randn(weight.shape[0]).requires_grad_()
    elif variant == "off_policy_clipped":  # sampled long ago: ratios far from 1, so clipping removes some gradient
        batch = replace(batch, sampling_logprobs_BT=batch.sampling_logprobs_BT - 2.0)
    else:  # ECHO's advantage form with stale ENV log-probs: ENV ratios spread around 1, some clipped
        cfg = _config(0.2, form="advantage")
        stale = torch.linspace(-0.5, 0.5, batch.targets_BT.numel()).reshape(batch.targets_BT.shape)
        lp = torch.log_softmax(hidden @ weight.T, -1).gather(-1, batch.targets_BT[..., None])[..., 0]
        batch = replace(batch, env_old_logprobs_BT=lp + stale, env_keep_B=torch.tensor([True, False]))
    params, got = [], []
    for impl in ("fused", "naive"):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        b = None if bias is None else bias.detach().clone().requires_grad_()
        loss, metrics = loss_from_hidden(
            h, w, batch, cfg.model_copy(update={"logprob_impl": impl}), step=0, lm_head_bias_V=b
        )
        params.append([p for p in (h, w, b) if p is not None])
        got.append((loss, torch.autograd.grad(loss, params[-1]), metrics))
    (loss, grads, metrics), (ref, ref_grads, ref_metrics) = got
    torch.testing.assert_close(loss, ref, atol=1e-6, rtol=1e-5)
    for g, want in zip(grads, ref_grads, strict=True):
        assert want.abs().max() > 1e-4
        torch.testing.assert_close(g, want, atol=1e-6, rtol=1e-5)
    assert metrics.keys() == ref_metrics.keys()
    for key, value in metrics.items():
        torch.testing.assert_close(value, ref_metrics[key], atol=1e-6, rtol=1e-5, msg=key)
    if variant == "off_policy_clipped":
        assert metrics["grpo/clip_frac"] > 0


def test_temperature_scales_action_logits_only() -> None:
    # The importance ratio needs ACTION log-probs at the sampling temperature; ENV CE is the world
    # model's own distribution (temperature 1), which is what held-out env-token CE measures.
    hidden, weight, batch = _hidden_case(seed=2)
    cfg = _config(0.5).model_copy(update={"temperature": 0.5})
    loss, _ = loss_from_hidden(hidden, weight, batch, cfg, step=0)
    logits = hidden @ weight.T
    at = {
        t: torch.log_softmax(logits / t, dim=-1).gather(-1, batch.targets_BT[..., None]).squeeze(-1) for t in (0.5, 1)
    }
    mixed = torch.where(batch.roles_BT == Role.ACTION, at[0.5], at[1])
    torch.testing.assert_close(loss, loss_from_logprobs(mixed, batch, cfg, step=0)[0], atol=1e-6, rtol=1e-5)
    everywhere = loss_from_logprobs(at[0.5], batch, cfg, step=0)[0]
    assert not torch.allclose(loss, everywhere, atol=1e-3)  # scaling ENV logits too would be caught


def test_loss_from_hidden_rejects_unshifted_hidden() -> None:
    hidden, weight, batch = _hidden_case()
    with pytest.raises(ValueError, match=r"hidden\[:, :-1\]"):
        loss_from_hidden(torch.cat([hidden, hidden[:, :1]], dim=1), weight, batch, _config(), step=0)


def test_public_api_is_pinned() -> None:
    assert sorted(losses.__all__) == sorted(
        [
            "ChunkedTargetLogprobs", "ConstantLambda", "EchoConfig", "FusedLinearTokenLoss", "GRPOConfig",
            "LambdaSchedule", "LinearDecayLambda", "LossBatch", "LossConfig", "RolloutFilterConfig",
            "StepDecayLambda", "env_cross_entropy", "env_mask", "fused_token_loss", "group_advantages", "grpo_loss",
            "k3_kl", "keep_by_parse_failures", "keep_not_errored", "lambda_at",
            "liger_available", "loss_from_hidden", "loss_from_logprobs", "naive_token_logprobs",
            "rollout_keep_mask", "token_logprobs",
        ]
    )  # fmt: skip
    for name in losses.__all__:
        assert getattr(losses, name) is not None
    with pytest.raises(AttributeError, match="no attribute"):
        _ = losses.not_a_loss


def test_config_import_does_not_import_torch() -> None:
    code = "import sys, trainers.losses as l; l.LossConfig(); assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
