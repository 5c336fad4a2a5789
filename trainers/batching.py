"""From GRPO groups to learner micro-batches.

    TrajectoryGroups ─► samples_from_groups ─► Samples (ids, roles, sampling log-probs,
                                                       group advantage, ECHO keep flag)
                     ─► deal / split_for_ranks (balanced by tokens, for data parallelism)
                     ─► micro_batches (sorted by length, under a padded-token budget)
                     ─► to_loss_batch (padded tensors + the optimizer step's token totals)

Failed episodes (sandbox or policy errors) carry no signal and are dropped before the
advantages are computed, so they never pull a group's mean. The token totals of the whole
optimizer step travel with every micro-batch: each term is normalised once per step, however
the step is split into micro-batches or across ranks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from trainers.losses import LossBatch, LossConfig, group_advantages, rollout_keep_mask
from trainers.roles import Role
from trainers.trajectory import DoneReason, Trajectory, TrajectoryGroup, require_trainable


@dataclass(frozen=True)
class Sample:
    """One trajectory, ready to train on."""

    token_ids: list[int]
    roles: list[int]
    logprobs: list[float]
    advantage: float
    env_keep: bool

    def __len__(self) -> int:
        return len(self.token_ids)

    @classmethod
    def of(cls, t: Trajectory, advantage: float = 0.0, env_keep: bool = True) -> Sample:
        return cls(t.token_ids, t.roles, t.logprobs, advantage, env_keep)


@dataclass(frozen=True)
class StepTotals:
    """Target-token counts of a whole optimizer step: each loss term's normaliser."""

    n_action: float
    n_env: float

    @classmethod
    def of(cls, samples: list[Sample]) -> StepTotals:
        # Targets are tokens 1..n-1 (the one-position shift): the first token is never predicted.
        n_action = sum(sum(1 for r in s.roles[1:] if r == Role.ACTION) for s in samples)
        n_env = sum(sum(1 for r in s.roles[1:] if r == Role.ENV) for s in samples if s.env_keep)
        return cls(float(n_action), float(n_env))


def samples_from_groups(groups: list[TrajectoryGroup], config: LossConfig) -> list[Sample]:
    """Advantages within each group (over its trainable episodes) and the ECHO rollout filters."""
    require_trainable(groups)
    samples: list[Sample] = []
    for group in groups:
        kept = [t for t in group.trajectories if t.trainable]
        if not kept:
            continue
        if len(kept) >= 2:
            rewards = torch.tensor([[t.reward for t in kept]], dtype=torch.float64)
            advantages = group_advantages(
                rewards, scale_by_std=config.grpo.scale_advantages_by_std, eps=config.grpo.advantage_eps
            )[0].tolist()
        else:
            advantages = [0.0]  # a lone survivor has no group to be compared with
        keep = rollout_keep_mask(
            config.echo.filters,
            len(kept),
            n_failed_actions_B=[t.parse_errors for t in kept],
            n_actions_B=[max(t.turns, 1) for t in kept],
            errored_B=[t.done_reason is DoneReason.TIMEOUT for t in kept],
        ).tolist()
        samples += [Sample.of(t, a, k) for t, a, k in zip(kept, advantages, keep, strict=True)]
    return samples


def split_for_ranks(samples: list[Sample], world_size: int) -> list[list[Sample]]:
    """Deal samples to ranks, longest first to the least-loaded rank: balanced work, deterministic."""
    shares: list[list[Sample]] = [[] for _ in range(world_size)]
    loads = [0] * world_size
    for sample in sorted(samples, key=len, reverse=True):
        rank = loads.index(min(loads))
        shares[rank].append(sample)
        loads[rank] += len(sample)
    return shares


@dataclass(frozen=True)
class DealtBatch:
    """One optimizer step's samples (and behaviour-cloning anchor) dealt to the ranks, with the
    whole step's token totals. A share is a list of `Sample`s, or a Ray reference to one, which
    Ray resolves on the rank it is handed to."""

    shares: list[Any]
    totals: StepTotals
    anchor_shares: list[Any]
    anchor_totals: StepTotals


def deal(samples: list[Sample], world_size: int, anchor: list[Sample] | None = None) -> DealtBatch:
    anchor = anchor or []
    return DealtBatch(
        split_for_ranks(samples, world_size),
        StepTotals.of(samples),
        split_for_ranks(anchor, world_size),
        StepTotals.of(anchor),
    )


MICRO_BATCH_COST_TOKENS = 256
"""What one more micro-batch costs, in padded tokens' worth of compute (its forward and backward
calls): measured on the main job's CPU learner, where 1,024-token micro-batches were slower than
2,048-token ones although they padded less."""


def micro_batches(samples: list[Sample], max_tokens: int) -> list[list[Sample]]:
    """The length-sorted samples cut into consecutive runs, each padded to its longest sample and
    at most `max_tokens` in all (a longer sample alone, never cut: the learner trains it whole and
    says so once), so that padded tokens plus a fixed cost per run (`MICRO_BATCH_COST_TOKENS`)
    are fewest: one pass of dynamic programming over the cuts.

    Greedy filling up to the budget padded 21% of the main job's tokens; this pads fewer, and
    pays for an extra micro-batch only where it saves more padding than it costs."""
    ordered = sorted(samples, key=len)
    # best[j]: the least cost of the first j samples; cut[j]: where its last run begins.
    best = [0] + [float("inf")] * len(ordered)
    cut = [0] * (len(ordered) + 1)
    for j in range(1, len(ordered) + 1):
        longest = len(ordered[j - 1])
        for i in range(j - 1, -1, -1):
            rows = j - i
            if rows > 1 and rows * longest > max_tokens:
                break
            cost = best[i] + rows * longest + MICRO_BATCH_COST_TOKENS
            if cost < best[j]:
                best[j], cut[j] = cost, i
    batches: list[list[Sample]] = []
    j = len(ordered)
    while j > 0:
        batches.append(ordered[cut[j] : j])
        j = cut[j]
    return batches[::-1]


def to_loss_batch(
    samples: list[Sample], totals: StepTotals, *, pad_id: int, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor, LossBatch]:
    """Right-padded (input_ids_BT, attention_mask_BT, LossBatch). Padding is PROMPT: nothing trains it."""
    width = max(len(s) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    roles = torch.full((len(samples), width), int(Role.PROMPT), dtype=torch.long)
    logprobs = torch.zeros((len(samples), width), dtype=torch.float32)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    for i, s in enumerate(samples):
        n = len(s)
        ids[i, :n] = torch.tensor(s.token_ids)
        roles[i, :n] = torch.tensor(s.roles)
        logprobs[i, :n] = torch.tensor(s.logprobs)
        mask[i, :n] = 1
    batch = LossBatch.from_tokens(
        ids.to(device),
        roles.to(device),
        advantages_B=torch.tensor([s.advantage for s in samples], dtype=torch.float32, device=device),
        sampling_logprobs_BT=logprobs.to(device),
        env_keep_B=torch.tensor([s.env_keep for s in samples], dtype=torch.bool, device=device),
    )
    batch = dataclasses.replace(batch, n_action_tokens=totals.n_action, n_env_tokens=totals.n_env)
    return ids.to(device), mask.to(device), batch
