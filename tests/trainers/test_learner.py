"""Learners: bit-exact resume from a checkpoint, data parallelism equal to one rank, BC and eval."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from learner_data import CONFIG, LORA, MODEL, batch_of_step
from learner_data import train_step_of as _step

from hillclimb.config.learner import LearnerConfig, LoraConfig
from orchestrator.learner_group import LearnerGroup
from trainers.batching import Sample, StepTotals, deal
from trainers.learner import Learner, merge_metrics
from trainers.roles import Role


@pytest.mark.parametrize("config", [CONFIG, LORA], ids=["full", "lora"])
def test_resuming_a_checkpoint_continues_bit_exact(tmp_path: Path, config: LearnerConfig) -> None:
    torch.set_num_threads(1)
    straight = Learner(MODEL, config)
    for step in range(4):
        _step(straight, step)
    first_half = Learner(MODEL, config)
    for step in range(2):
        _step(first_half, step)
    first_half.save(str(tmp_path / "ck"), step=2, version=2)
    resumed = Learner(MODEL, config.model_copy(update={"seed": 123}))  # different init: the checkpoint must win
    info = resumed.load(str(tmp_path / "ck"))
    assert info["step"] == 2 and info["version"] == 2
    for step in range(2, 4):
        _step(resumed, step)
    assert _step(straight, 4)["loss"] == _step(resumed, 4)["loss"]
    for (name, a), (_, b) in zip(straight.model.named_parameters(), resumed.model.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    resumed_params = dict(resumed.model.named_parameters())
    for name, param in straight.model.named_parameters():
        if not param.requires_grad:  # LoRA's frozen base has no optimizer state
            continue
        a, b = straight.optimizer.state[param], resumed.optimizer.state[resumed_params[name]]
        assert torch.equal(a["exp_avg_sq"], b["exp_avg_sq"]) and torch.equal(a["step"], b["step"]), name


def test_behaviour_cloning_lowers_action_cross_entropy_only() -> None:
    learner = Learner(MODEL, CONFIG)
    samples = batch_of_step(0)
    env_before = learner.env_cross_entropy(samples)
    first = learner.train_step(samples, StepTotals.of(samples), 0, imitate=True)
    for step in range(1, 15):
        last = learner.train_step(samples, StepTotals.of(samples), step, imitate=True)
    assert last["bc/action_ce"] < 0.8 * first["bc/action_ce"]
    assert first["loss"] == pytest.approx(first["bc/action_ce"])  # the loss is exactly the action CE
    assert "echo/ce" not in last and "grpo/loss" not in last
    assert learner.env_cross_entropy(samples) > 0.0 and env_before > 0.0


def test_the_warm_up_steps_at_its_own_learning_rate() -> None:
    config = CONFIG.model_copy(update={"lr": 1e-4, "warmup_lr": 1e-2})
    learner = Learner(MODEL, config)
    samples = batch_of_step(0)

    def largest_move(step: int, imitate: bool) -> float:
        before = [p.detach().clone() for p in learner.model.parameters()]
        learner.train_step(samples, StepTotals.of(samples), step, imitate=imitate)
        return max((p.detach() - b).abs().max().item() for p, b in zip(learner.model.parameters(), before, strict=True))

    # Adam's first step moves a parameter by about the learning rate, whatever the gradient's scale.
    assert largest_move(0, imitate=True) == pytest.approx(1e-2, rel=0.2)
    assert largest_move(0, imitate=False) < 3e-4


def test_lr_scale_scales_the_step_exactly() -> None:
    samples = batch_of_step(0)

    def move(scale: float) -> tuple[list[torch.Tensor], float]:
        learner = Learner(MODEL, CONFIG)  # same seed: the same initial weights every time
        before = [p.detach().clone() for p in learner.model.parameters()]
        values = learner.train_step(samples, StepTotals.of(samples), 0, lr_scale=scale)
        return [p.detach() - b for p, b in zip(learner.model.parameters(), before, strict=True)], values["lr"]

    full, full_lr = move(1.0)
    quarter, quarter_lr = move(0.25)
    assert (full_lr, quarter_lr) == (pytest.approx(1e-2), pytest.approx(2.5e-3))
    for a, b in zip(full, quarter, strict=True):  # Adam's first update is linear in the learning rate
        torch.testing.assert_close(b, 0.25 * a, rtol=1e-4, atol=1e-9)
    still, _ = move(0.0)
    assert all(torch.count_nonzero(d) == 0 for d in still)


def test_the_learning_rate_decays_linearly_over_the_last_fraction_of_the_run() -> None:
    assert [CONFIG.lr_scale(p) for p in (0.0, 0.9, 1.0)] == [1.0, 1.0, 1.0]  # no decay by default
    decaying = CONFIG.model_copy(update={"lr_decay_fraction": 0.25})
    scales = [decaying.lr_scale(p) for p in (0.0, 0.75, 0.875, 1.0, 1.2)]
    assert scales == [1.0, 1.0, pytest.approx(0.5), 0.0, 0.0]


def test_an_anchor_adds_the_behaviour_cloning_gradient_of_its_action_tokens() -> None:
    config = CONFIG.model_copy(update={"grad_clip": None, "anchor_coef": 0.5})
    samples, anchor = batch_of_step(0), batch_of_step(1)

    def gradient(**kwargs: object) -> dict[str, torch.Tensor]:
        learner = Learner(MODEL, config)  # same seed: the same initial weights every time
        learner.train_step(**kwargs)  # type: ignore[arg-type]
        return learner.gradients()

    rl = gradient(samples=samples, totals=StepTotals.of(samples), step=0)
    bc = gradient(samples=anchor, totals=StepTotals.of(anchor), step=0, imitate=True)
    both = gradient(
        samples=samples, totals=StepTotals.of(samples), step=0, anchor=anchor, anchor_totals=StepTotals.of(anchor)
    )
    for name in rl:
        torch.testing.assert_close(both[name], rl[name] + 0.5 * bc[name], rtol=1e-4, atol=1e-7)
    # The anchor's ENV tokens are context, never targets: relabelled as PROMPT, nothing changes.
    muted = [
        Sample(s.token_ids, [int(Role.PROMPT) if r == Role.ENV else r for r in s.roles], s.logprobs, 0.0, True)
        for s in anchor
    ]
    again = gradient(
        samples=samples, totals=StepTotals.of(samples), step=0, anchor=muted, anchor_totals=StepTotals.of(muted)
    )
    for name in rl:
        torch.testing.assert_close(again[name], both[name])


def test_either_echo_form_makes_the_same_update_and_logs_the_same_env_cross_entropy() -> None:
    # The learner makes one pass a batch, so the advantage form's ENV ratios are exactly 1: its
    # gradient is the CE form's, through micro-batches and the step's normalisers (λ = 0.5 here).
    samples = batch_of_step(0)

    def step(form: str) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        loss = CONFIG.loss.model_copy(update={"echo": CONFIG.loss.echo.model_copy(update={"form": form})})
        learner = Learner(MODEL, CONFIG.model_copy(update={"grad_clip": None, "loss": loss}))
        return learner.train_step(samples, StepTotals.of(samples), 0), learner.gradients()

    (ce_metrics, ce), (adv_metrics, adv) = step("cross_entropy"), step("advantage")
    for name in ce:
        torch.testing.assert_close(adv[name], ce[name], rtol=1e-5, atol=1e-8)
    assert adv_metrics["echo/ce"] == pytest.approx(ce_metrics["echo/ce"], rel=1e-6)
    assert adv_metrics["echo/loss"] == pytest.approx(-0.5, rel=1e-6)  # -λ · (mean ratio 1)


def test_an_anchor_reports_its_action_cross_entropy() -> None:
    learner = Learner(MODEL, CONFIG)
    samples, anchor = batch_of_step(0), batch_of_step(1)
    plain = learner.train_step(samples, StepTotals.of(samples), 0)
    anchored = learner.train_step(
        samples, StepTotals.of(samples), 1, anchor=anchor, anchor_totals=StepTotals.of(anchor)
    )
    assert "anchor/action_ce" not in plain
    assert anchored["anchor/action_ce"] > 0.0
    assert anchored["echo/n_env_tokens"] == plain["echo/n_env_tokens"]  # the RL terms are the samples' alone


def test_metrics_merge_by_hand() -> None:
    # Step-normalised losses add; clip fractions average weighted by action tokens (10 and 30):
    # (0.5 * 10 + 0.1 * 30) / 40 = 0.2.
    parts = [
        {"loss": 1.0, "grpo/clip_frac": 0.5, "grpo/n_action_tokens": 10.0, "echo/lambda": 0.5},
        {"loss": 2.0, "grpo/clip_frac": 0.1, "grpo/n_action_tokens": 30.0, "echo/lambda": 0.5},
    ]
    assert merge_metrics(parts) == {
        "loss": 3.0,
        "grpo/clip_frac": pytest.approx(0.2),
        "grpo/n_action_tokens": 40.0,
        "echo/lambda": 0.5,
    }


@pytest.mark.ray
@pytest.mark.skipif(os.cpu_count() is None, reason="needs processes")
@pytest.mark.parametrize("lora", [None, LoraConfig(rank=4, alpha=8)], ids=["full", "lora"])
async def test_two_ddp_ranks_make_the_same_update_as_one_rank_on_the_fullbatch_of_step(
    ray_local: None, lora: LoraConfig | None
) -> None:
    config = CONFIG.model_copy(update={"lora": lora})
    one = LearnerGroup(MODEL, config)
    two = LearnerGroup(MODEL, config.model_copy(update={"num_learners": 2}))
    try:
        for step in range(2):
            samples = batch_of_step(step)
            anchor = batch_of_step(step + 10)  # a behaviour-cloning anchor rides along, split across ranks too
            single = await one.train_step(deal(samples, one.world_size, anchor), step)
            double = await two.train_step(deal(samples, two.world_size, anchor), step)
            assert double["anchor/action_ce"] == pytest.approx(single["anchor/action_ce"], rel=1e-5)
            assert double["loss"] == pytest.approx(single["loss"], rel=1e-5)  # the ranks' shares add up
            # The all-reduced gradient is the full batch's gradient (up to float summation order) ...
            g1, g2 = await one.ranks[0].gradients.remote(), await two.ranks[0].gradients.remote()
            for name in g1:
                torch.testing.assert_close(g2[name], g1[name], rtol=1e-3, atol=1e-6)
        # ... so the weights agree too; Adam divides by sqrt(v), which magnifies the float noise of
        # near-zero gradients, hence the looser tolerance on weights than on gradients.
        w1, w2 = await one.weights(), await two.weights()
        for name in w1:
            torch.testing.assert_close(w2[name], w1[name], rtol=1e-3, atol=1e-4)
        rank1 = await two.ranks[1].weights.remote()
        assert all(torch.equal(rank1[name], w2[name]) for name in w2)  # replicas stay identical
        # A warm-up (behaviour-cloning) step reports the whole batch's action CE, however split.
        bc_single = await one.train_step(deal(batch_of_step(5), one.world_size), 2, imitate=True)
        bc_double = await two.train_step(deal(batch_of_step(5), two.world_size), 2, imitate=True)
        assert bc_double["bc/action_ce"] == pytest.approx(bc_single["bc/action_ce"], rel=1e-4)
    finally:
        one.shutdown()
        two.shutdown()


def test_a_step_counts_every_position_it_trained_over_anchor_included() -> None:
    samples, anchor = batch_of_step(0), batch_of_step(1)
    metrics = Learner(MODEL, CONFIG).train_step(
        samples, StepTotals.of(samples), 0, anchor=anchor, anchor_totals=StepTotals.of(anchor)
    )
    assert metrics["learner/tokens"] == sum(map(len, samples)) + sum(map(len, anchor))
    assert metrics["learner/tokens"] > metrics["grpo/n_action_tokens"] + metrics["echo/n_env_tokens"]
    assert merge_metrics([metrics, metrics])["learner/tokens"] == 2 * metrics["learner/tokens"]  # ranks add up
