"""`placement_plan`: where a run config's learners and policy engine go, and whether they fit.

    RunConfig ─► the model's shape (trainers.models.shape: config.json only)
              ─► learner ranks: nodes × GPUs (`placement: pack` fills a node before the next),
                 host memory per learner pod, GPU memory per rank (orchestrator.memory_estimate)
              ─► policy engine: count, GPUs, tensor parallelism, host memory of its pod, GPU
                 memory, KV-cache tokens
              ─► fits: every estimate within the GPU's memory

What `hillclimb train CONFIG --dry-run` prints, to size a cluster (and the chart's values) before a
single pod starts.
"""

from __future__ import annotations

import math
from typing import Any

from hillclimb.config.run import RunConfig
from orchestrator.memory_estimate import GIB, engine_memory, learner_memory, weight_bytes
from trainers.models.shape import model_shape

__all__ = ["placement_plan"]

HOST_RUNTIME_GIB = 4.0
"""A process's own host memory (Python, torch, CUDA and NCCL libraries) beside the weights it loads."""


def placement_plan(cfg: RunConfig, gpu_gib: float, gpus_per_node: int) -> dict[str, Any]:
    """The plan as plain data (`--json` emits it as is); the policy must hold a model (hf or vllm)."""
    policy, learner = cfg.policy, cfg.learner
    model = policy.model  # type: ignore[union-attr]  # hf and vllm engines hold one
    shape = model_shape(model)
    on_gpu = learner.device.startswith("cuda")
    gpus = learner.num_learners * max(learner.gpus_per_learner, 1 if on_gpu else 0)
    per_node = max(1, int(gpus_per_node // max(learner.gpus_per_learner, 1)))  # ranks a node holds
    ranks_per_node = 1 if learner.placement == "spread" else min(per_node, learner.num_learners)
    fp32_model_gib = 4 * shape.parameters / GIB  # the learner's master weights, read from disk on the host
    # FSDP: rank 0 alone reads the model (the others start on `meta`); DDP: every replica does
    readers = 1 if learner.starts_on_meta else ranks_per_node
    host_gib = readers * fp32_model_gib + ranks_per_node * HOST_RUNTIME_GIB
    memory = {
        mode: learner_memory(shape, learner, gpu_gib, checkpointing=mode == "with") for mode in ("without", "with")
    }
    learners = {
        "ranks": learner.num_learners,
        "strategy": learner.strategy,
        "device": learner.device,
        "gpus": gpus,
        "nodes": math.ceil(learner.num_learners / ranks_per_node),
        "ranks_per_node": ranks_per_node,
        "host_memory_per_pod_gib": round(host_gib, 1),
        "gpu_memory": memory["without"].as_dict(),
        "gpu_memory_with_activation_checkpointing": memory["with"].as_dict(),
        "activation_checkpointing": learner.checkpoints_activations,
    }
    engine = _engine(shape, policy, gpu_gib)
    chosen = memory["with" if learner.checkpoints_activations else "without"]
    fits = (not on_gpu or chosen.fits) and engine.get("gpu_memory", {}).get("fits", True)
    return {
        "model": {"name": getattr(model, "name_or_path", "tiny"), "parameters": shape.parameters, "dtype": shape.dtype},
        "gpu_memory_gib": gpu_gib,
        "gpus_per_node": gpus_per_node,
        "learners": learners,
        "engines": engine,
        "fits": fits,
    }


def _engine(shape: Any, policy: Any, gpu_gib: float) -> dict[str, Any]:
    gpus = policy.gpus
    host_gib = shape.parameters * weight_bytes(shape, getattr(policy.model, "dtype", "auto")) / GIB + HOST_RUNTIME_GIB
    plan: dict[str, Any] = {
        "count": policy.engines,
        "gpus_each": gpus,
        "tensor_parallel": getattr(policy, "tensor_parallel", 1),  # vLLM's alone
        "type": policy.type,
        "host_memory_per_pod_gib": round(host_gib, 1),
    }
    if policy.type == "hf" and not policy.device.startswith("cuda"):
        return plan | {"device": policy.device}
    # vLLM's share of its GPU is gpu_memory_utilization; an hf engine's is the fraction Ray reserves
    share = 1.0 if policy.type == "vllm" else min(gpus, 1) or 1.0
    estimate, tokens = engine_memory(shape, policy, gpu_gib * share)
    return plan | {"gpu_memory": estimate.as_dict(), "kv_cache_tokens": tokens}
