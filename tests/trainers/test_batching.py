"""From GRPO groups to micro-batches: advantages by hand, failed episodes out, budgets, shares."""

from __future__ import annotations

import pytest

from tests.factories import trajectory
from trainers.batching import (
    MICRO_BATCH_COST_TOKENS,
    StepTotals,
    micro_batches,
    samples_from_groups,
    split_for_ranks,
    to_loss_batch,
)
from trainers.losses import LossConfig
from trainers.roles import Role
from trainers.trajectory import DoneReason, Trajectory, TrajectoryGroup

A, E, P = int(Role.ACTION), int(Role.ENV), int(Role.PROMPT)


def _t(
    sample: int, reward: float, *, n: int = 6, done: DoneReason = DoneReason.FINISHED, parse_errors: int = 0
) -> Trajectory:
    roles = ([P, A, A, E, E, E] * n)[:n]
    return trajectory(
        sample=sample,
        token_ids=list(range(n)),
        roles=roles,
        logprobs=[-0.1] * n,
        reward=reward,
        done=done,
        turns=2,
        parse_errors=parse_errors,
    )


def test_advantages_are_group_normalised_over_trainable_episodes_only() -> None:
    group = TrajectoryGroup.of([_t(0, 1.0), _t(1, 0.0), _t(2, 1.0), _t(3, 0.0, done=DoneReason.SANDBOX_ERROR)])
    samples = samples_from_groups([group], LossConfig())
    # Rewards [1, 0, 1] (the sandbox error is dropped): mean 2/3, sample std sqrt(1/3) = 0.57735;
    # advantages (1 - 2/3) / (0.57735 + eps) = 0.57735 and (0 - 2/3) / (0.57735 + eps) = -1.1547.
    assert [s.advantage for s in samples] == pytest.approx([0.57735, -1.15470, 0.57735], abs=1e-4)


def test_rollout_filter_drops_env_tokens_of_parse_failures() -> None:
    config = LossConfig.model_validate({"echo": {"filters": {"max_parse_failure_fraction": 0.5}}})
    group = TrajectoryGroup.of([_t(0, 1.0, parse_errors=0), _t(1, 0.0, parse_errors=2)])  # 2 of 2 turns failed
    assert [s.env_keep for s in samples_from_groups([group], config)] == [True, False]


def test_step_totals_count_targets_after_the_shift() -> None:
    samples = samples_from_groups([TrajectoryGroup.of([_t(0, 1.0), _t(1, 0.0)])], LossConfig())
    # roles [P, A, A, E, E, E]: targets are tokens 1..5 → 2 ACTION and 3 ENV each.
    assert StepTotals.of(samples) == StepTotals(n_action=4.0, n_env=6.0)


def test_micro_batches_respect_the_padded_budget() -> None:
    lengths = [3, 9, 4, 10, 2, 8]
    samples = samples_from_groups(
        [TrajectoryGroup.of([_t(i, float(i % 2), n=n) for i, n in enumerate(lengths)])], LossConfig()
    )
    batches = micro_batches(samples, max_tokens=20)
    # Sorted 2,3,4,8,9,10: [2,3,4] pads to 4×3 = 12; adding 8 would pad to 32 > 20. Three runs are
    # the fewest; [8,9], [10] and [8], [9,10] both pad the rest to 28: the longer run first stays.
    assert [[len(s) for s in b] for b in batches] == [[2, 3, 4], [8, 9], [10]]
    assert all(max(len(s) for s in b) * len(b) <= 20 or len(b) == 1 for b in batches)


@pytest.mark.parametrize(
    ("lengths", "expected"),
    [
        # One run pads to 4 × 300 = 1,200 tokens; [10,10,10] + [300] pads to 330 and costs one more
        # micro-batch (256): 330 + 2 × 256 < 1,200 + 256, so it splits.
        ([300, 10, 10, 10], [[10, 10, 10], [300]]),
        # Near-equal lengths: splitting saves 2 tokens of padding and costs 256: one run.
        ([100, 101, 99], [[99, 100, 101]]),
    ],
)
def test_micro_batches_trade_padding_against_their_own_cost(lengths: list[int], expected: list[list[int]]) -> None:
    assert MICRO_BATCH_COST_TOKENS == 256  # the figures above are worked out with it
    samples = samples_from_groups(
        [TrajectoryGroup.of([_t(i, float(i % 2), n=n) for i, n in enumerate(lengths)])], LossConfig()
    )
    assert [[len(s) for s in b] for b in micro_batches(samples, max_tokens=100_000)] == expected


def test_rank_shares_are_balanced_and_cover_everything() -> None:
    lengths = [10, 9, 8, 7, 6, 5, 4, 3]
    samples = samples_from_groups(
        [TrajectoryGroup.of([_t(i, float(i % 2), n=n) for i, n in enumerate(lengths)])], LossConfig()
    )
    shares = split_for_ranks(samples, 2)
    assert sorted(len(s) for share in shares for s in share) == sorted(lengths)
    assert [sum(len(s) for s in share) for share in shares] == [26, 26]


def test_padded_batch_and_shifted_loss_batch() -> None:
    samples = samples_from_groups([TrajectoryGroup.of([_t(0, 1.0, n=4), _t(1, 0.0, n=6)])], LossConfig())
    ids, mask, batch = to_loss_batch(samples, StepTotals.of(samples), pad_id=99, device="cpu")
    assert ids.tolist() == [[0, 1, 2, 3, 99, 99], [0, 1, 2, 3, 4, 5]] and mask.sum().item() == 10
    assert batch.roles_BT[0].tolist() == [A, A, E, P, P]  # padding is PROMPT: nothing trains it
    assert batch.n_action_tokens == 4.0 and batch.n_env_tokens == 4.0


def test_a_group_of_one_survivor_gets_zero_advantage() -> None:
    group = TrajectoryGroup.of([_t(0, 1.0), _t(1, 0.0, done=DoneReason.POLICY_ERROR)])
    (only,) = samples_from_groups([group], LossConfig())
    assert only.advantage == pytest.approx(0.0)
