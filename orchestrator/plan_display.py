"""`print_plan`: `hillclimb train --dry-run`'s placement plan as lines on stderr (stdout keeps the
resolved config, so it stays one JSON document a script can read)."""

from __future__ import annotations

from typing import Any

from rich.console import Console

_err = Console(stderr=True, soft_wrap=True)


def print_plan(plan: dict[str, Any] | None, policy_type: str) -> None:
    if plan is None:
        _err.print(f"placement: none to plan, policy.type {policy_type!r} holds no model to train")
        return
    model, learners, engine = plan["model"], plan["learners"], plan["engines"]
    gpu = plan["gpu_memory_gib"]
    count = model["parameters"]
    size = f"{count / 1e9:.2f} B" if count >= 1e8 else f"{count:,}"
    _err.print(f"model: {model['name']}, {size} parameters ({model['dtype']})")
    _err.print(
        f"learners: {learners['ranks']} ranks ({learners['strategy']}, {learners['device']}) on "
        f"{learners['nodes']} node(s), up to {learners['ranks_per_node']} a node; host memory per learner pod "
        f"≈ {learners['host_memory_per_pod_gib']:g} GiB "
        "(the fp32 model, read by rank 0 under FSDP, by every rank under DDP)"
    )
    if learners["device"].startswith("cuda"):  # CPU ranks: no GPU to fit
        _err.print(f"  per GPU: {_estimate(learners['gpu_memory'], gpu)}")
        checkpointed = learners["gpu_memory_with_activation_checkpointing"]
        _err.print(f"  per GPU with activation checkpointing: {_estimate(checkpointed, gpu)}")
    line = (
        f"engines: {engine['count']} {engine['type']}, {engine['gpus_each']:g} GPU(s) each, "
        f"tensor parallel {engine['tensor_parallel']}; host memory per pod ≈ {engine['host_memory_per_pod_gib']:g} GiB"
    )
    if "gpu_memory" in engine:
        line += f"; {_estimate(engine['gpu_memory'], gpu)}, KV cache ≈ {engine['kv_cache_tokens']:,} tokens"
    _err.print(line)
    verdict = "[green]fits[/]" if plan["fits"] else "[red]does NOT fit[/]"
    _err.print(f"plan: {verdict} in {gpu:g} GiB GPUs (estimates from config.json; see orchestrator/memory_estimate.py)")


def _estimate(estimate: dict[str, Any], gpu: float) -> str:
    parts = ", ".join(
        f"{name.removesuffix('_gib')} {value:g}"
        for name, value in estimate.items()
        if name.endswith("_gib") and name not in ("total_gib", "capacity_gib")
    )
    fits = "fits" if estimate["fits"] else "does NOT fit"
    return f"≈ {estimate['total_gib']:g} GiB of {estimate['capacity_gib']:g} ({parts}) — {fits}"
