"""The learner's numerics and memory: fp32 master weights whatever the engines serve, bf16
compute, checkpointed decoder blocks (same gradients, less kept for the backward, with DDP and
FSDP too), TF32 on CUDA, and a warning when a sample outgrows its micro-batch budget. On CPU."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from learner_data import CONFIG, LORA, MODEL, batch_of_step
from learner_data import train_step_of as _step

from bench import learner_gpu
from hillclimb.config.learner import LearnerConfig
from orchestrator.learner_group import LearnerGroup
from trainers.batching import Sample, StepTotals, deal, to_loss_batch
from trainers.learner import Learner, fast_fp32_matmuls
from trainers.losses import loss_from_hidden
from trainers.models import HFModelConfig
from trainers.models.head import lm_head

DEEPER = MODEL.model_copy(update={"num_layers": 4})
"""Four blocks: checkpointing keeps one input per block where the plain forward keeps everything."""


def _kept_for_backward(learner: Learner, samples: list[Sample]) -> int:
    """Bytes the forward of one micro-batch (trunk, head and loss) leaves allocated for the
    backward: the profiler's net CPU allocations over it (what it allocated and did not free).
    Parameters were allocated before, so they do not count; the loss's scalars (a few bytes) do."""
    ids, mask, batch = to_loss_batch(
        samples, StepTotals.of(samples), pad_id=learner.tokenizer.pad_token_id, device="cpu"
    )
    profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True)
    with profiler:
        hidden = learner._hidden(ids, mask)
        weight, bias = lm_head(learner.model)
        loss, _ = loss_from_hidden(hidden[:, :-1], weight, batch, CONFIG.loss, step=0, lm_head_bias_V=bias)
    kept = sum(event.self_cpu_memory_usage for event in profiler.key_averages())
    loss.backward()  # the graph was real: it runs backward
    return kept


def test_checkpointed_blocks_keep_a_ninth_of_the_activations() -> None:
    samples = batch_of_step(0)  # 12 samples, padded to 12 × 39 tokens in one micro-batch
    plain = _kept_for_backward(Learner(DEEPER, CONFIG.model_copy(update={"activation_checkpointing": False})), samples)
    checkpointed = _kept_for_backward(
        Learner(DEEPER, CONFIG.model_copy(update={"activation_checkpointing": True})), samples
    )
    # Measured: 4,881,540 bytes plain, 524,872 checkpointed (hidden 32, MLP 64, 4 blocks): a
    # plain block keeps its norms, projections, attention and MLP intermediates; a checkpointed
    # one only its input (12 × 39 × 32 × 4 bytes = 59,904), recomputing the rest in the backward.
    assert checkpointed < plain / 5, (plain, checkpointed)


@pytest.mark.parametrize("config", [CONFIG, LORA], ids=["full", "lora"])
def test_checkpointed_blocks_give_the_same_gradients(config: LearnerConfig) -> None:
    grads = []
    for checkpointing in (False, True):
        learner = Learner(DEEPER, config.model_copy(update={"activation_checkpointing": checkpointing}))
        _step(learner, 0)
        _step(learner, 1)  # the second step's gradients: after a real update, through recomputed blocks
        grads.append(learner.gradients())
    plain, checkpointed = grads
    assert plain.keys() == checkpointed.keys() and plain
    for name in plain:
        # The recompute runs the same ops on the same inputs: bit-identical on CPU (measured); 1e-6
        # relative leaves room for a kernel that sums in another order on recompute.
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-6, atol=1e-8)


def test_activation_checkpointing_and_precision_resolve_by_device() -> None:
    cpu, cuda = LearnerConfig(), LearnerConfig(device="cuda")
    assert (cpu.bf16, cpu.checkpoints_activations) == (False, False)  # the CPU path as it always was
    assert (cuda.bf16, cuda.checkpoints_activations) == (True, True)  # a GPU run is not silently fp32
    explicit = LearnerConfig(device="cuda", precision="fp32", activation_checkpointing=False)
    assert (explicit.bf16, explicit.checkpoints_activations) == (False, False)
    assert LearnerConfig(precision="bf16", activation_checkpointing=True).checkpoints_activations


@pytest.fixture(scope="module")
def bf16_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small Qwen2 saved in bf16 (as released checkpoints are), with a tokenizer."""
    path = tmp_path_factory.mktemp("bf16-model")
    learner_gpu.write_model_dir(path, learner_gpu.SIZES["toy"])
    return path


def _moved_by_a_step(learner: Learner, samples: list[Sample]) -> list[float]:
    """For each weight matrix, the fraction of its entries one step changed (biases, which start
    at zero where a 1e-6 step always lands, left out)."""
    matrices = {n: p for n, p in learner.model.named_parameters() if p.dim() == 2}
    before = {n: p.detach().clone() for n, p in matrices.items()}
    learner.train_step(samples, StepTotals.of(samples), 0)
    return [float((p != before[n]).float().mean()) for n, p in matrices.items()]


@pytest.mark.parametrize("engine_dtype", ["auto", "bfloat16"])
def test_a_tiny_update_survives_in_fp32_master_weights_of_a_bf16_checkpoint(
    bf16_checkpoint: Path, engine_dtype: str
) -> None:
    # The mechanism: bf16 keeps 8 significant bits, so a weight of 0.02 sits between neighbours
    # 2^-13 ≈ 1.2e-4 apart, and 0.02 - 1e-6 rounds back to 0.02. In fp32 they are 2^-29 ≈ 1.9e-9
    # apart: the update lands. AdamW's first step moves every weight with a gradient by ~lr.
    weight = torch.tensor(0.02)
    assert weight.bfloat16() - 1e-6 == weight.bfloat16() and weight - 1e-6 != weight

    samples = learner_gpu.agent_samples(learner_gpu.SIZES["toy"])
    model = HFModelConfig(name_or_path=str(bf16_checkpoint), dtype=engine_dtype)  # what the engines load
    config = CONFIG.model_copy(update={"lr": 1e-6, "precision": "bf16"})
    learner = Learner(model, config)
    assert {p.dtype for p in learner.model.parameters()} == {torch.float32}
    assert min(_moved_by_a_step(learner, samples)) > 0.9  # nearly every weight of every matrix took its 1e-6 step

    # The same step on bf16 parameters (what the learner held before: the engines' dtype) loses it.
    learner = Learner(model, config)
    learner.model.to(torch.bfloat16)
    learner.optimizer = learner._optimizer()
    assert max(_moved_by_a_step(learner, samples)) < 0.05  # only weights within ~1e-4 of zero can take it


def test_bf16_compute_on_cpu_trains_fp32_weights_close_to_fp32_compute() -> None:
    losses = {}
    for precision in ("fp32", "bf16"):
        learner = Learner(MODEL, CONFIG.model_copy(update={"precision": precision}))
        losses[precision] = [_step(learner, step)["loss"] for step in range(3)]
        assert all(p.dtype == torch.float32 for p in learner.model.parameters())
        if precision == "bf16":
            assert learner._autocast().fast_dtype == torch.bfloat16
    assert losses["bf16"] != losses["fp32"]  # bf16 did compute something differently...
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=5e-2, abs=5e-3)  # ...at bf16's precision


def test_fp32_matmuls_use_tf32_on_cuda_only() -> None:
    before = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    try:
        torch.set_float32_matmul_precision("highest")
        fast_fp32_matmuls(torch.device("cpu"))
        assert torch.get_float32_matmul_precision() == "highest"
        fast_fp32_matmuls(torch.device("cuda", 0))  # sets flags only: no GPU needed
        assert torch.get_float32_matmul_precision() == "high" and torch.backends.cudnn.allow_tf32
    finally:
        torch.set_float32_matmul_precision(before[0])
        torch.backends.cudnn.allow_tf32 = before[1]


def test_a_sample_longer_than_the_micro_batch_budget_is_warned_of_once(caplog: pytest.LogCaptureFixture) -> None:
    learner = Learner(MODEL, CONFIG.model_copy(update={"micro_batch_tokens": 32}))
    samples = batch_of_step(0)
    longest = max(map(len, samples))
    assert longest > 32
    with caplog.at_level(logging.WARNING, logger="trainers.learner"):
        for step in range(2):
            learner.train_step(samples, StepTotals.of(samples), step)
    warnings = [r.getMessage() for r in caplog.records if "micro_batch_tokens" in r.getMessage()]
    assert warnings == [
        f"a sample of {longest} tokens exceeds learner.micro_batch_tokens=32: it is trained as a micro-batch "
        f"of its own, all {longest} tokens at once; if that runs out of memory, cap the rollouts' length "
        "or turn learner.activation_checkpointing on (warned once)"
    ]


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
async def test_two_ranks_in_bf16_with_checkpointed_blocks_train_as_one_rank(ray_local: None, strategy: str) -> None:
    """Checkpointed blocks under DDP, and under FSDP's per-block sharding with bf16 parameters
    and fp32 gradient reduction (gloo carries the bf16 gathers): the step one rank makes."""
    config = CONFIG.model_copy(update={"precision": "bf16", "activation_checkpointing": True})
    one = LearnerGroup(DEEPER, config)
    two = LearnerGroup(DEEPER, config.model_copy(update={"num_learners": 2, "strategy": strategy}))
    try:
        for step in range(2):
            single = await one.train_step(deal(batch_of_step(step), one.world_size), step)
            double = await two.train_step(deal(batch_of_step(step), two.world_size), step)
            # bf16 products on other batch shapes (FSDP: bf16 norms too) round differently: 2%.
            assert double["loss"] == pytest.approx(single["loss"], rel=2e-2)
            assert double["grad_norm"] == pytest.approx(single["grad_norm"], rel=5e-2)
        weights = await two.weights()
        assert {w.dtype for w in weights.values()} == {torch.float32}  # the master weights, gathered
    finally:
        one.shutdown()
        two.shutdown()


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_lora_keeps_its_frozen_base_in_the_compute_dtype_and_its_adapters_in_fp32(precision: str) -> None:
    learner = Learner(MODEL, LORA.model_copy(update={"precision": precision}))
    frozen = {p.dtype for p in learner.model.parameters() if not p.requires_grad}
    adapters = {name: p.detach().clone() for name, p in learner._trainable()}
    assert frozen == {torch.bfloat16 if precision == "bf16" else torch.float32}
    assert adapters and {p.dtype for p in adapters.values()} == {torch.float32}  # the master copy of what trains
    metrics = _step(learner, 0)
    assert torch.isfinite(torch.tensor(metrics["loss"]))
    moved = [name for name, p in learner._trainable() if not torch.equal(p, adapters[name])]
    assert moved, "the adapters took no update"
