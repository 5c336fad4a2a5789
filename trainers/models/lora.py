"""LoRA adapters on a learner's model (peft): added, shipped to policy engines alone, merged for export.

    learner:  add_adapters(model, LoraConfig) ─► targeted nn.Linear layers become peft LoRA layers
              in place (the model keeps its class, its LM head and its parameter names' prefixes);
              only the adapters' A and B train
    sync:     adapter_update(model) ─► {"<module>.lora_A": A, "<module>.lora_B": B, "<module>.lora_scale": s}
    engine:   `trainers.models.adapters.merged_weights` (no peft there) merges them into plain weights
    export:   `trainers.models.export` merges a checkpoint's adapters (peft) and saves a plain model

Adapter tensors are named by the plain model's module names (`model.layers.0.self_attn.q_proj`),
which are the policy engine's, whatever peft calls them inside the learner.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model
from peft.tuners.lora import LoraLayer

from hillclimb.config.learner import LoraConfig
from hillclimb.errors import ConfigError
from trainers.models.adapters import SCALE, A, B

__all__ = ["adapter_update", "add_adapters"]

_ADAPTER = "default"  # peft's name for a model's one adapter


def add_adapters(model: Any, config: LoraConfig) -> Any:
    """Wrap `model` in peft LoRA layers (in place) and freeze all but the adapters; returns the
    `PeftModel` around it, for `disable_adapter()` and merging. Raises `ConfigError` when no
    module matches `config.target_modules` or the LM head would carry an adapter."""
    targets = config.target_modules if isinstance(config.target_modules, str) else list(config.target_modules)
    if not isinstance(targets, str):  # all-linear leaves the LM head out itself
        _check_targets(model, targets)
    peft_config = PeftLoraConfig(
        r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout, target_modules=targets, bias="none"
    )
    with warnings.catch_warnings():  # peft reads an attribute transformers deprecated; not ours to fix
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, peft_config)


def _check_targets(model: Any, targets: list[str]) -> None:
    """Every target names a module (as peft matches them: the whole name or its last parts), and
    none the LM head."""
    names = [name for name, _ in model.named_modules()]
    missing = [t for t in targets if not any(_matches(name, t) for name in names)]
    if missing:
        raise ConfigError(
            f"learner.lora.target_modules: {missing} match no module of {type(model).__name__}, whose linear "
            f"layers are {sorted(_linear_names(model))}; name some of those, or use all-linear"
        )
    head = next(name for name, m in model.named_modules() if m is model.get_output_embeddings())
    if any(_matches(head, t) for t in targets):
        raise ConfigError(
            f"learner.lora.target_modules names the LM head ({head!r}): the losses apply the head's weight "
            "themselves, so it cannot carry an adapter; leave it out"
        )


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith(f".{target}")


def _linear_names(model: Any) -> set[str]:
    return {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def _lora_layers(model: Any) -> list[tuple[str, Any]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLayer)]


def adapter_update(model: Any) -> dict[str, torch.Tensor]:
    """The adapters of a model `add_adapters` wrapped, on the CPU, named by module: what a policy
    engine needs to merge them (each module's A, B and scale alpha/rank)."""
    update: dict[str, torch.Tensor] = {}
    for name, layer in _lora_layers(model):
        update[name + A] = layer.lora_A[_ADAPTER].weight.detach().cpu()
        update[name + B] = layer.lora_B[_ADAPTER].weight.detach().cpu()
        update[name + SCALE] = torch.tensor(float(layer.scaling[_ADAPTER]))
    return update
