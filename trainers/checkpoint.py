"""Checkpoints in safetensors: weights, optimizer state and RNG state, resumable bit for bit.

    <dir>/model.safetensors       the model's state dict (what a policy engine loads)
    <dir>/reference.safetensors   the frozen KL reference model, when the KL penalty is on
    <dir>/optimizer.safetensors   per-parameter optimizer state, keyed by parameter name,
                                  and the RNG states under `rng/...`
    <dir>/trainer.json            step, policy version, optimizer hyperparameters, extras

Written to `<dir>.tmp` and renamed, so a checkpoint directory is whole or absent.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model


def _optimizer_tensors(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    names = {param: name for name, param in model.named_parameters()}
    tensors: dict[str, torch.Tensor] = {}
    for param, state in optimizer.state.items():
        for key, value in state.items():
            tensor = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"opt/{names[param]}/{key}"] = tensor.detach().cpu().contiguous()
    tensors["rng/torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda{i}"] = state
    return tensors


def save_checkpoint(
    directory: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    reference: torch.nn.Module | None = None,
    **info: Any,
) -> Path:
    """Write a checkpoint; `reference` is the frozen KL reference model, when there is one."""
    final = Path(directory)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))  # handles tied weights (embeddings = LM head)
    if reference is not None:
        save_model(reference, str(tmp / "reference.safetensors"))
    info["has_reference"] = reference is not None
    save_file(_optimizer_tensors(model, optimizer), str(tmp / "optimizer.safetensors"))
    groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    (tmp / "trainer.json").write_text(json.dumps({**info, "param_groups": groups}, indent=2, default=list))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def load_checkpoint(
    directory: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    *,
    reference: torch.nn.Module | None = None,
) -> dict[str, Any]:
    """Restore weights (and optimizer + RNG state when `optimizer` is given, the KL reference's
    weights into `reference` when the checkpoint has them); returns trainer.json."""
    directory = Path(directory)
    device = next(model.parameters()).device
    load_model(model, str(directory / "model.safetensors"), device=str(device))
    if reference is not None and (directory / "reference.safetensors").exists():
        load_model(reference, str(directory / "reference.safetensors"), device=str(device))
    info = json.loads((directory / "trainer.json").read_text())
    if optimizer is None:
        return info
    saved = load_file(str(directory / "optimizer.safetensors"))
    params = dict(model.named_parameters())
    for key, value in saved.items():
        if key.startswith("opt/"):
            name, field = key[len("opt/") :].rsplit("/", 1)
            optimizer.state[params[name]][field] = value.to(device) if field != "step" else value
    for group, stored in zip(optimizer.param_groups, info["param_groups"], strict=True):
        group.update({k: tuple(v) if isinstance(v, list) else v for k, v in stored.items()})
    torch.set_rng_state(saved["rng/torch"])
    cuda_states = [saved[k] for k in sorted(saved) if k.startswith("rng/cuda")]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    return info


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest `step-NNNNNN` directory under `root`, if any."""
    found = sorted(p for p in Path(root).glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
    return found[-1] if found else None
