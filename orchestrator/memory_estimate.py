"""Memory per GPU of a learner rank and of a policy engine, estimated from the model's shape alone.

An estimate to size a cluster before renting it, not a measurement: it counts the big tensors and
adds a fixed allowance for the rest. In bytes, for P parameters (`ModelShape.parameters`), N ranks
sharing the states (`LearnerConfig.shards`: `shard_group_size`, or `num_learners`, with
`strategy: fsdp`; else 1), T = `micro_batch_tokens`, L
layers, width h, MLP width I, K/V width d = kv_heads · head_dim, and a = 2 bytes per activation
when the learner computes in bf16 (`precision`; 4 in fp32):

    states       16 P / N      fp32 master weights (4), gradients (4), AdamW's two moments (8);
                               with LoRA: 4 P for the frozen weights, 16 P_lora for the adapters
                               (P_lora = rank · (in + out) summed over the targeted projections)
    compute      fsdp: (4 + c) (E + 2 P_layer)   the root unit (embeddings, head, final norm: E)
                                                 and two decoder layers gathered at once (the one
                                                 running and the one prefetched), plus their
                                                 autocast copy (c = 2 with bf16, else 0)
                 ddp:  c P                       autocast's bf16 copy of every weight
    activations  per micro-batch, saved for the backward pass, per token and layer
                 A = a (6 h + 2 d + 4 I) + 8 h   (attention: norm and QKV inputs, Q, K, V, the
                                                  attention output; MLP: norm input, gate and up
                                                  outputs, SiLU, product; both RMSNorms' fp32 copies)
                 without checkpointing: T L A;  with it: T L a h (each layer's input) + T A
                 + one layer's T A working set for the backward, + the LM head's fp32 logit tiles
    load peak    4 P           one rank (or a DDP replica) loads the whole model, in fp32 (the
                               learner's master weights), on its device; FSDP ranks start on
                               `meta` and receive their shards (`trainers.meta_init`): none
    per GPU      max(load peak, states + compute + activations) + RUNTIME_GIB

A vLLM engine takes `gpu_memory_utilization` of its GPU: the weights (P · w, w of the inference
dtype) and an allowance for its activations come first, the KV cache gets the rest, at
2 L d w bytes a token; it fits if that holds one `max_model_len` sequence. An `hf` engine needs
the weights plus a KV cache for `max_batch` sequences of `max_context` tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hillclimb.config.learner import LLAMA_PROJECTIONS, LearnerConfig
from trainers.models.shape import DTYPE_BYTES, ModelShape

__all__ = ["GIB", "engine_memory", "learner_memory", "weight_bytes"]

GIB = 2**30
RUNTIME_GIB = 3.0
"""CUDA context, NCCL buffers and the caching allocator's slack, per GPU: an allowance, not a count."""
VLLM_ACTIVATION_GIB = 2.0
"""What vLLM keeps for its forward passes (and CUDA graphs) beside the weights and the KV cache."""
LOGIT_TILES_BYTES = 3 * 2**25 * 4
"""The fused loss's fp32 logit tile (`trainers.losses.fused`, 2**25 logits), its softmax and gradient."""


@dataclass(frozen=True)
class Estimate:
    parts_gib: dict[str, float]
    """Each term of the module docstring's sum, in GiB."""
    total_gib: float
    capacity_gib: float
    """What the process may use of its GPU."""

    @property
    def fits(self) -> bool:
        return self.total_gib <= self.capacity_gib

    def as_dict(self) -> dict[str, Any]:
        rounded = {name: round(value, 2) for name, value in self.parts_gib.items()}
        return {**rounded, "total_gib": round(self.total_gib, 2), "capacity_gib": self.capacity_gib, "fits": self.fits}


def weight_bytes(shape: ModelShape, dtype: str) -> int:
    """Bytes a weight takes in `dtype` (`auto`: the checkpoint's own)."""
    return DTYPE_BYTES.get(shape.dtype if dtype == "auto" else dtype, 4)


def _lora_parameters(shape: ModelShape, config: LearnerConfig) -> int:
    assert config.lora is not None
    q, kv, h, i = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim, shape.hidden, shape.intermediate
    sides = {
        "q_proj": h + q, "k_proj": h + kv, "v_proj": h + kv, "o_proj": q + h,
        "gate_proj": h + i, "up_proj": h + i, "down_proj": i + h,
    }  # fmt: skip
    targets = LLAMA_PROJECTIONS if config.lora.target_modules == "all-linear" else config.lora.target_modules
    per_layer = sum(width for name, width in sides.items() if any(name.endswith(t) for t in targets))
    return config.lora.rank * per_layer * shape.layers


def _activations(shape: ModelShape, config: LearnerConfig, checkpointing: bool) -> float:
    a = 2 if config.bf16 else 4
    h, d = shape.hidden, shape.kv_heads * shape.head_dim
    per_token_layer = a * (6 * h + 2 * d + 4 * shape.intermediate) + 8 * h
    tokens = config.micro_batch_tokens
    saved = tokens * shape.layers * (a * h if checkpointing else per_token_layer)
    recomputed = tokens * per_token_layer if checkpointing else 0
    return saved + recomputed + tokens * per_token_layer + LOGIT_TILES_BYTES


def learner_memory(shape: ModelShape, config: LearnerConfig, gpu_gib: float, *, checkpointing: bool) -> Estimate:
    """One learner rank's GPU memory (see the module docstring)."""
    p = shape.parameters
    shards = config.shards
    states = 16 * p / shards if config.lora is None else 4 * p + 16 * _lora_parameters(shape, config)
    cast = 2 if config.bf16 else 0
    if shards > 1:
        root = shape.embedding_parameters + shape.hidden
        compute = (4 + cast) * (root + 2 * shape.layer_parameters)
    else:
        compute = cast * p
    activations = _activations(shape, config, checkpointing)
    load_peak = 0 if config.starts_on_meta else 4 * p
    steady = states + compute + activations
    parts = {
        "states_gib": states / GIB,
        "compute_copy_gib": compute / GIB,
        "activations_gib": activations / GIB,
        "load_peak_gib": load_peak / GIB,
        "runtime_gib": RUNTIME_GIB,
    }
    return Estimate(parts, max(load_peak, steady) / GIB + RUNTIME_GIB, gpu_gib)


def engine_memory(shape: ModelShape, policy: Any, gpu_gib: float) -> tuple[Estimate, int]:
    """A vllm or hf engine's GPU memory (see the module docstring), and the KV cache's tokens."""
    w = weight_bytes(shape, getattr(policy.model, "dtype", "auto"))
    weights, per_token = shape.parameters * w, shape.kv_bytes_per_token(w)
    if policy.type == "vllm":
        capacity = policy.gpu_memory_utilization * gpu_gib
        kv_bytes = capacity * GIB - weights - VLLM_ACTIVATION_GIB * GIB
        tokens = max(int(kv_bytes // per_token), 0)
        context = policy.max_model_len or shape.max_positions
        needed = weights + VLLM_ACTIVATION_GIB * GIB + context * per_token  # at least one whole sequence
        parts = {"weights_gib": weights / GIB, "activations_gib": VLLM_ACTIVATION_GIB, "kv_cache_gib": kv_bytes / GIB}
        return Estimate(parts, needed / GIB, capacity), tokens
    context = policy.max_context or shape.max_positions
    tokens = policy.max_batch * context
    parts = {"weights_gib": weights / GIB, "kv_cache_gib": tokens * per_token / GIB, "runtime_gib": RUNTIME_GIB}
    return Estimate(parts, (weights + tokens * per_token) / GIB + RUNTIME_GIB, gpu_gib), tokens
