"""LoRA adapters as they travel to policy engines, and their merge into an engine's plain weights.

    {"<module>.lora_A": A, "<module>.lora_B": B, "<module>.lora_scale": s}   (`lora.adapter_update`)
      ─► merged_weights(W0 by weight name, update) ─► {"<module>.weight": W0 + s · B · A}

The engine's model stays a plain one (the Lean decode path and vLLM's loader see ordinary Llama
weights), and it keeps W0, so every sync replaces the previous delta instead of adding to it.
Torch alone: a policy engine never imports peft.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from hillclimb.errors import ConfigError

__all__ = ["A", "B", "SCALE", "adapted_weight_names", "is_adapter_update", "merged_weights"]

A, B, SCALE = ".lora_A", ".lora_B", ".lora_scale"
"""Suffixes of a module's name in an adapter update."""


def is_adapter_update(weights: Mapping[str, Any]) -> bool:
    """Whether `weights` holds adapters (from `lora.adapter_update`) rather than a full state dict."""
    return any(key.endswith(SCALE) for key in weights)


def adapted_weight_names(update: Mapping[str, Any]) -> list[str]:
    """The plain model's weights an adapter update changes."""
    return [key.removesuffix(SCALE) + ".weight" for key in update if key.endswith(SCALE)]


@torch.no_grad()
def merged_weights(base: Mapping[str, torch.Tensor], update: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """W0 + scale · B · A for every module in `update`, computed in float32, in W0's dtype and
    device; `base` holds each W0 by weight name (`adapted_weight_names`)."""
    merged: dict[str, torch.Tensor] = {}
    for name in adapted_weight_names(update):
        module = name.removesuffix(".weight")
        if name not in base:
            raise ConfigError(
                f"the adapters target {module!r}, which the policy engine's model does not have: the learner "
                "and the policy engine must load the same model"
            )
        w0 = base[name]
        a, b = (update[module + suffix].to(w0.device, torch.float32) for suffix in (A, B))
        delta = float(update[module + SCALE]) * (b @ a)
        merged[name] = (w0.float() + delta).to(w0.dtype)
    return merged
