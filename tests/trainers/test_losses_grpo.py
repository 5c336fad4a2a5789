"""GRPO by hand: group advantages, the clipped ratio on each side, token normalisation, k3 KL."""

from __future__ import annotations

import math

import pytest
import torch

from trainers.losses import group_advantages, grpo_loss, k3_kl

F64 = torch.float64


def test_group_advantages_by_hand() -> None:
    # Task 0: rewards [1,0,0,1], mean 0.5 → centred [.5,-.5,-.5,.5]; sample std = sqrt(4·0.25/3) = 0.577350
    #         → [.5/.57735, ...] = [0.866025, -0.866025, -0.866025, 0.866025]
    # Task 1: rewards [0,1,2,3], mean 1.5 → centred [-1.5,-.5,.5,1.5]; std = sqrt((2.25+.25+.25+2.25)/3) = 1.290994
    #         → [-1.161895, -0.387298, 0.387298, 1.161895]
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 2.0, 3.0]], dtype=F64)
    adv = group_advantages(rewards, eps=0.0)
    expected = torch.tensor(
        [[0.866025, -0.866025, -0.866025, 0.866025], [-1.161895, -0.387298, 0.387298, 1.161895]], dtype=F64
    )
    torch.testing.assert_close(adv, expected, atol=1e-6, rtol=0)


def test_group_advantages_mean_centred_only() -> None:
    # Dr. GRPO: no std division. [1,0,0,1] - 0.5 = [.5,-.5,-.5,.5]
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0]]), scale_by_std=False)
    assert torch.equal(adv, torch.tensor([[0.5, -0.5, -0.5, 0.5]]))


def test_zero_variance_group_gives_exactly_zero_advantages() -> None:
    # All-equal rewards carry no signal. 0.1 is not exact in binary, so mean(0.1,0.1,0.1) - 0.1 can be a
    # ±1e-17 residue, which divided by eps = 1e-6 would be ±1e-11: the function must return exact zeros.
    rewards = torch.tensor([[0.1, 0.1, 0.1], [2.0, 2.0, 2.0], [0.0, 1.0, 0.0]], dtype=F64)
    adv = group_advantages(rewards)
    assert torch.equal(adv[:2], torch.zeros(2, 3, dtype=F64))
    assert adv[2, 1] > 1.0  # the group with signal is untouched: (1 - 1/3) / 0.57735 = 1.1547


def test_group_of_one_is_rejected() -> None:
    with pytest.raises(ValueError, match="at least 2 episodes"):
        group_advantages(torch.tensor([[1.0], [0.0]]))


def _clip_case():
    # Two episodes; ε_low = 0.2, ε_high = 0.3 so the two sides are told apart. Sampling log-probs -1.
    # Row 0 (A = +1): positions [PROMPT, ACT r=1.0, ACT r=1.5, ACT r=0.5, ENV]
    # Row 1 (A = -1): positions [PROMPT, ACT r=0.5, ACT r=1.5, ENV, ENV]
    ratios = torch.tensor([[1.0, 1.0, 1.5, 0.5, 1.0], [1.0, 0.5, 1.5, 1.0, 1.0]], dtype=F64)
    old = torch.full((2, 5), -1.0, dtype=F64)
    logp = (old + ratios.log()).requires_grad_()
    action = torch.tensor([[0, 1, 1, 1, 0], [0, 1, 1, 0, 0]], dtype=torch.bool)
    return logp, old, torch.tensor([1.0, -1.0], dtype=F64), action


def test_clipped_objective_by_hand_on_both_sides() -> None:
    # ℓ = -min(r·A, clip(r, 0.8, 1.3)·A):
    #   A=+1, r=1.0: -min(1.0, 1.0) = -1.0
    #   A=+1, r=1.5: -min(1.5, 1.3) = -1.3   (upper clip active: no gradient)
    #   A=+1, r=0.5: -min(0.5, 0.8) = -0.5   (below the band but A>0: unclipped branch, gradient flows)
    #   A=-1, r=0.5: -min(-0.5, -0.8) = 0.8  (lower clip active: no gradient)
    #   A=-1, r=1.5: -min(-1.5, -1.3) = 1.5  (above the band but A<0: unclipped branch)
    # Σ = -1 - 1.3 - 0.5 + 0.8 + 1.5 = -0.5 over 5 action tokens → loss = -0.1
    logp, old, adv, action = _clip_case()
    loss, m = grpo_loss(logp, old, adv, action, clip_eps_low=0.2, clip_eps_high=0.3)
    torch.testing.assert_close(loss, torch.tensor(-0.1, dtype=F64), atol=1e-12, rtol=0)
    # dℓ/dlogp = -A·r / 5 where unclipped, 0 where clipped, 0 off the action mask:
    #   row 0: [0, -1.0/5, 0, -0.5/5, 0] = [0, -0.2, 0, -0.1, 0]; row 1: [0, 0, +1.5/5, 0, 0] = [0, 0, 0.3, 0, 0]
    (grad,) = torch.autograd.grad(loss, [logp])
    expected = torch.tensor([[0, -0.2, 0, -0.1, 0], [0, 0, 0.3, 0, 0]], dtype=F64)
    torch.testing.assert_close(grad, expected, atol=1e-12, rtol=0)
    # Clip fractions: low 1/5 (A<0, r=0.5), high 1/5 (A>0, r=1.5); mean ratio (1+1.5+.5+.5+1.5)/5 = 1.0
    assert m["grpo/clip_frac"].item() == pytest.approx(0.4)
    assert m["grpo/clip_frac_low"].item() == pytest.approx(0.2)
    assert m["grpo/clip_frac_high"].item() == pytest.approx(0.2)
    assert m["grpo/ratio_mean"].item() == pytest.approx(1.0)
    assert m["grpo/n_action_tokens"].item() == 5
    assert "grpo/kl" not in m


def test_token_level_normalisation_over_the_whole_batch() -> None:
    # On-policy (ratio 1), A = [+1, -1]; row 0 has 3 action tokens, row 1 has 1.
    # Token level: (3·(-1) + 1·(+1)) / 4 = -0.5.  (A per-sequence mean would give (-1 + 1)/2 = 0.)
    logp = torch.zeros(2, 4, dtype=F64, requires_grad=True)
    action = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    adv = torch.tensor([1.0, -1.0], dtype=F64)
    loss, _ = grpo_loss(logp, None, adv, action)
    assert loss.item() == pytest.approx(-0.5)
    # With the optimizer step's count passed in (say 8 tokens over two micro-batches): -2 / 8 = -0.25
    loss8, _ = grpo_loss(logp, None, adv, action, n_action_tokens=8)
    assert loss8.item() == pytest.approx(-0.25)


def test_non_action_positions_cannot_leak_even_if_nan() -> None:
    logp, old, adv, action = _clip_case()
    poisoned = torch.where(action, logp.detach(), torch.tensor(float("nan"), dtype=F64)).requires_grad_()
    loss, _ = grpo_loss(poisoned, old, adv, action, clip_eps_low=0.2, clip_eps_high=0.3)
    (grad,) = torch.autograd.grad(loss, [poisoned])
    assert torch.isfinite(loss) and torch.equal(grad[~action], torch.zeros(int((~action).sum()), dtype=F64))


def test_k3_by_hand() -> None:
    # logp = ln 0.5, ref = ln 0.25: d = ref - logp = -ln 2 → e^d - d - 1 = 0.5 + 0.693147 - 1 = 0.193147
    # logp = ref: d = 0 → 0
    kl = k3_kl(torch.tensor([math.log(0.5), -1.0], dtype=F64), torch.tensor([math.log(0.25), -1.0], dtype=F64))
    torch.testing.assert_close(kl, torch.tensor([0.5 + math.log(2) - 1, 0.0], dtype=F64), atol=1e-12, rtol=0)


def test_kl_penalty_adds_coef_times_mean_k3() -> None:
    # Zero advantages leave only the KL: tokens with k3 = [0.193147, 0] → 0.1 · (0.193147 + 0) / 2 = 0.0193147
    logp = torch.tensor([[math.log(0.5), -1.0]], dtype=F64)
    ref = torch.tensor([[math.log(0.25), -1.0]], dtype=F64)
    action = torch.ones(1, 2, dtype=torch.bool)
    loss, m = grpo_loss(logp, None, torch.zeros(1, dtype=F64), action, kl_coef=0.1, ref_logprobs_BT=ref)
    assert loss.item() == pytest.approx(0.1 * (0.5 + math.log(2) - 1) / 2)
    assert m["grpo/kl"].item() == pytest.approx((0.5 + math.log(2) - 1) / 2)


def test_kl_off_needs_no_reference_and_kl_on_does() -> None:
    logp, old, adv, action = _clip_case()
    grpo_loss(logp, old, adv, action, kl_coef=0.0, ref_logprobs_BT=None)
    with pytest.raises(ValueError, match="ref_logprobs"):
        grpo_loss(logp, old, adv, action, kl_coef=0.01, ref_logprobs_BT=None)


def test_no_action_tokens_gives_zero_loss_with_a_gradient_path() -> None:
    logp = torch.zeros(1, 3, requires_grad=True)
    loss, m = grpo_loss(logp, None, torch.ones(1), torch.zeros(1, 3, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and m["grpo/n_action_tokens"].item() == 0 and torch.equal(logp.grad, torch.zeros(1, 3))
