"""The learner's CUDA path, on one GPU (`bench/gpu_checks.sh` runs it on a lent machine): a bf16
FSDP step over a process group of one, a sharded checkpoint, and a resume that continues the run.

On CPU this file skips: what it checks (NCCL, `MixedPrecisionPolicy` gathering bf16 on a GPU, TF32,
checkpointed blocks under CUDA) has no CPU stand-in; the gloo tests cover the same code paths."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from learner_data import CONFIG, MODEL, train_step_of

from hillclimb.config.models import TinyModelConfig
from trainers.learner import Learner

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

WIDER = MODEL.model_copy(update={"hidden_size": 256, "num_layers": 4, "num_heads": 4, "intermediate_size": 1024})
GPU_FSDP = CONFIG.model_copy(update={"device": "cuda", "strategy": "fsdp", "precision": "auto"})


def _joined(model: TinyModelConfig, scratch: Path) -> Learner:
    """One rank in a process group of one, sharded by FSDP (NCCL on the GPU)."""
    learner = Learner(model, GPU_FSDP)
    learner.join(f"file://{scratch / uuid.uuid4().hex}")
    return learner


def _full_weights(learner: Learner) -> dict[str, torch.Tensor]:
    return {name: tensor.float().clone() for name, tensor in learner.weights().items()}


def test_a_bf16_fsdp_step_checkpoints_and_resumes_on_one_gpu(tmp_path: Path) -> None:
    first = _joined(WIDER, tmp_path)
    assert GPU_FSDP.bf16 and GPU_FSDP.checkpoints_activations  # `auto` on CUDA
    assert torch.get_float32_matmul_precision() == "high"  # TF32 for what stays fp32
    assert {p.dtype for p in first.model.parameters()} == {torch.float32}  # master weights
    torch.cuda.reset_peak_memory_stats()
    for step in (0, 1):
        train_step_of(first, step)
    print(f"peak CUDA memory over two steps: {torch.cuda.max_memory_allocated() / 2**20:.1f} MiB")
    checkpoint = first.save(str(tmp_path / "step-2"), step=2, version=2)
    assert (Path(checkpoint) / "state" / "__0_0.distcp").is_file()
    saved = _full_weights(first)
    after_first = train_step_of(first, 2)
    continued = _full_weights(first)
    dist.destroy_process_group()

    resumed = _joined(WIDER, tmp_path)
    resumed.load(checkpoint)
    loaded = _full_weights(resumed)
    assert all(torch.equal(loaded[name], saved[name]) for name in saved)
    after_resume = train_step_of(resumed, 2)
    # The same step from the same state: equal up to the GPU's nondeterministic reductions.
    assert after_resume["loss"] == pytest.approx(after_first["loss"], rel=1e-3)
    moved = _full_weights(resumed)
    for name in continued:
        torch.testing.assert_close(moved[name], continued[name], rtol=1e-3, atol=1e-5)
    dist.destroy_process_group()
