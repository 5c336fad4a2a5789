"""ECHO pieces by hand: env-token CE, λ schedules at their boundary steps, rollout filters, config."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import TypeAdapter, ValidationError

from trainers.losses import (
    ConstantLambda,
    EchoConfig,
    LambdaSchedule,
    LinearDecayLambda,
    LossConfig,
    RolloutFilterConfig,
    StepDecayLambda,
    env_cross_entropy,
    env_mask,
    keep_by_parse_failures,
    keep_not_errored,
    lambda_at,
    rollout_keep_mask,
)
from trainers.roles import Role

P, A, E, S, W = Role.PROMPT, Role.ACTION, Role.ENV, Role.SCAFFOLD, Role.WARNING
LN2 = math.log(2)


def test_env_cross_entropy_by_hand() -> None:
    # ENV targets have p = 1/2, 1/4, 1/8 → -ln p = ln2, 2 ln2, 3 ln2; mean over 3 tokens = 2 ln2 = 1.386294.
    # The other positions (ACTION p = 1/16, SCAFFOLD p = 1e-9) must not count.
    roles = torch.tensor([[P, E, E, A], [S, E, W, W]])
    logp = torch.log(torch.tensor([[1.0, 0.5, 0.25, 1 / 16], [1e-9, 0.125, 1.0, 1.0]], dtype=torch.float64))
    logp.requires_grad_()
    ce, n = env_cross_entropy(logp, env_mask(roles))
    assert ce.item() == pytest.approx(2 * LN2) and n.item() == 3
    # d ce / d logp = -1/3 on each ENV target, 0 elsewhere.
    (grad,) = torch.autograd.grad(ce, [logp])
    torch.testing.assert_close(grad, torch.tensor([[0, -1 / 3, -1 / 3, 0], [0, -1 / 3, 0, 0]], dtype=torch.float64))
    # Own normaliser from outside (two micro-batches of 3 ENV tokens each): 6 ln2 / 6 = ln2.
    ce6, _ = env_cross_entropy(logp, env_mask(roles), n_env_tokens=6)
    assert ce6.item() == pytest.approx(LN2)


def test_env_mask_excludes_warnings_scaffold_and_dropped_episodes() -> None:
    roles = torch.tensor([[P, E, W, E], [E, S, A, E]])
    assert env_mask(roles).tolist() == [[False, True, False, True], [True, False, False, True]]
    keep = torch.tensor([True, False])
    assert env_mask(roles, keep).tolist() == [[False, True, False, True], [False, False, False, False]]


def test_no_env_tokens_gives_zero_ce() -> None:
    ce, n = env_cross_entropy(torch.zeros(1, 2, requires_grad=True), torch.zeros(1, 2, dtype=torch.bool))
    assert ce.item() == 0.0 and n.item() == 0


@pytest.mark.parametrize(
    ("step", "expected"),
    [(0, 0.1), (5, 0.05), (9, 0.01), (10, 0.0), (11, 0.0), (10**6, 0.0)],
)
def test_linear_decay_boundaries(step: int, expected: float) -> None:
    # λ(step) = 0.1 + (0 - 0.1) · step/10 until step 10, then exactly `end`.
    got = lambda_at(step, LinearDecayLambda(start=0.1, end=0.0, steps=10))
    assert got == pytest.approx(expected, abs=1e-15)
    if step >= 10:
        assert got == 0.0  # exactly, so ECHO switches off bit-for-bit


def test_linear_schedule_lands_exactly_on_end() -> None:
    # In floats 0.03 + (0.01 - 0.03) · 1 = 0.010000000000000002; the schedule returns `end` itself from `steps` on.
    assert 0.03 + (0.01 - 0.03) * 1.0 != 0.01
    assert lambda_at(4, LinearDecayLambda(start=0.03, end=0.01, steps=4)) == 0.01
    assert lambda_at(2, LinearDecayLambda(start=0.03, end=0.01, steps=4)) == pytest.approx(0.02)


@pytest.mark.parametrize(("step", "expected"), [(0, 0.1), (9, 0.1), (10, 0.05), (19, 0.05), (20, 0.025), (99, 0.025)])
def test_step_decay_boundaries(step: int, expected: float) -> None:
    # λ = 0.1 · 0.5^k, k = milestones (10, 20) at or before the step.
    assert lambda_at(step, StepDecayLambda(start=0.1, milestones=(10, 20), factor=0.5)) == pytest.approx(expected)


def test_step_decay_with_factor_zero_switches_off_exactly() -> None:
    schedule = StepDecayLambda(start=0.05, milestones=(3,), factor=0.0)
    assert lambda_at(2, schedule) == 0.05 and lambda_at(3, schedule) == 0.0


def test_constant_and_negative_step() -> None:
    assert lambda_at(0, ConstantLambda(value=0.05)) == 0.05 == lambda_at(10**9, ConstantLambda(value=0.05))
    with pytest.raises(ValueError, match="step"):
        lambda_at(-1, ConstantLambda())


def test_schedule_union_parses_by_type_and_rejects_bad_values() -> None:
    adapter = TypeAdapter(LambdaSchedule)
    parsed = adapter.validate_python({"type": "step_decay", "start": 0.1, "milestones": [5, 9]})
    assert isinstance(parsed, StepDecayLambda) and parsed.factor == 0.1
    with pytest.raises(ValidationError, match="strictly increasing"):
        adapter.validate_python({"type": "step_decay", "start": 0.1, "milestones": [9, 5]})
    with pytest.raises(ValidationError):
        adapter.validate_python({"type": "cosine", "start": 0.1})
    with pytest.raises(ValidationError):
        ConstantLambda(value=-0.1)


def test_config_forbids_unknown_keys_and_a_loss_with_nothing_to_train() -> None:
    with pytest.raises(ValidationError, match="lamda"):
        LossConfig.model_validate({"echo": {"lamda": 0.1}})
    with pytest.raises(ValidationError, match="nothing would train"):
        EchoConfig(verifier_free=True, schedule=ConstantLambda(value=0.0))
    cfg = LossConfig.model_validate({"echo": {"schedule": {"type": "linear_decay", "start": 0.05, "steps": 100}}})
    assert lambda_at(50, cfg.echo.schedule) == pytest.approx(0.025)


def test_parse_failure_filter_by_hand() -> None:
    # fractions = [0/4, 1/4, 3/4, no actions → 0]; threshold 0.25 keeps ≤ 0.25 → [T, T, F, T]
    keep = keep_by_parse_failures([0, 1, 3, 0], [4, 4, 4, 0], 0.25)
    assert keep.tolist() == [True, True, False, True]
    assert keep_by_parse_failures(torch.tensor([1, 0]), torch.tensor([4, 4]), 0.0).tolist() == [False, True]
    with pytest.raises(ValueError, match="between 0 and n_actions"):
        keep_by_parse_failures([5], [4], 0.5)


def test_errored_filter_and_combination() -> None:
    assert keep_not_errored([False, True]).tolist() == [True, False]
    filters = RolloutFilterConfig(max_parse_failure_fraction=0.5, drop_errored=True)
    # episode 0: 1/2 failed (kept), not errored → keep; 1: 2/2 failed → drop; 2: errored → drop; 3: fine → keep
    keep = rollout_keep_mask(
        filters, 4, n_failed_actions_B=[1, 2, 0, 0], n_actions_B=[2, 2, 1, 3], errored_B=[False, False, True, False]
    )
    assert keep.tolist() == [True, False, False, True]
    assert rollout_keep_mask(RolloutFilterConfig(), 3).tolist() == [True, True, True]  # filters off: keep all


def test_filter_stats_must_be_present_and_sized() -> None:
    with pytest.raises(ValueError, match="errored_B"):
        rollout_keep_mask(RolloutFilterConfig(drop_errored=True), 2)
    with pytest.raises(ValueError, match="shape"):
        rollout_keep_mask(RolloutFilterConfig(drop_errored=True), 2, errored_B=[True])
