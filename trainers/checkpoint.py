"""Checkpoints in safetensors: weights, optimizer state and RNG state, resumable bit for bit.

    <dir>/model.safetensors       the model's full state dict (what a policy engine loads)
    <dir>/reference.safetensors   the frozen KL reference model, when the KL penalty is on
    <dir>/optimizer.safetensors   per-parameter optimizer state, keyed by parameter name,
                                  and the RNG states under `rng/...`
    <dir>/trainer.json            step, policy version, optimizer hyperparameters, extras

The files hold full (unsharded) tensors whatever the learners' strategy: `State` is what
torch's distributed state-dict API gathers (`get_model_state_dict` / `get_optimizer_state_dict`
with `full_state_dict=True`), so a checkpoint written by sharded ranks loads into one process,
and back. Written to `<dir>.tmp` and renamed, so a checkpoint directory is whole or absent.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


@dataclasses.dataclass
class State:
    """A learner's state as full tensors on the CPU.

    `optimizer` is in torch's full optimizer-state-dict form: `{"state": {name: {field: value}},
    "param_groups": [{hyperparameters..., "params": [names]}]}`."""

    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    reference: dict[str, torch.Tensor] | None = None


def tied_parameters(model: torch.nn.Module) -> dict[str, str]:
    """Parameters that are another's tensor (an LM head tied to the embedding), each name mapped
    to the first name of its tensor: safetensors stores each tensor once."""
    first: dict[int, str] = {}
    tied: dict[str, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in first:
            tied[name] = first[id(param)]
        else:
            first[id(param)] = name
    return tied


def _untied(tensors: Mapping[str, torch.Tensor], tied: Mapping[str, str]) -> dict[str, torch.Tensor]:
    return {name: t.detach().cpu().contiguous() for name, t in tensors.items() if name not in tied}


def _retied(tensors: dict[str, torch.Tensor], tied: Mapping[str, str]) -> dict[str, torch.Tensor]:
    return {**tensors, **{name: tensors[source] for name, source in tied.items() if source in tensors}}


def _optimizer_tensors(optimizer: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for name, state in optimizer["state"].items():
        for field, value in state.items():
            tensor = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"opt/{name}/{field}"] = tensor.detach().cpu().contiguous()
    tensors["rng/torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, rng in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda{i}"] = rng
    return tensors


def save_checkpoint(directory: str | Path, state: State, *, tied: Mapping[str, str], **info: Any) -> Path:
    """Write a checkpoint; `tied` (from `tied_parameters`) are left out of the weight files."""
    final = Path(directory)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(_untied(state.model, tied), str(tmp / "model.safetensors"))
    if state.reference is not None:
        save_file(_untied(state.reference, tied), str(tmp / "reference.safetensors"))
    info["has_reference"] = state.reference is not None
    save_file(_optimizer_tensors(state.optimizer), str(tmp / "optimizer.safetensors"))
    groups = [{k: v for k, v in g.items() if k != "params"} for g in state.optimizer["param_groups"]]
    (tmp / "trainer.json").write_text(json.dumps({**info, "param_groups": groups}, indent=2, default=list))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def load_checkpoint(
    directory: str | Path, parameter_names: list[str], *, tied: Mapping[str, str]
) -> tuple[State, dict[str, Any]]:
    """Read a checkpoint: its state (tied parameters restored; optimizer hyperparameters over
    `parameter_names`, the one group the learner's optimizer has) and trainer.json. Restores
    the RNG states."""
    directory = Path(directory)
    info = json.loads((directory / "trainer.json").read_text())
    saved = load_file(str(directory / "optimizer.safetensors"))
    per_param: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in saved.items():
        if key.startswith("opt/"):
            name, field = key[len("opt/") :].rsplit("/", 1)
            per_param.setdefault(name, {})[field] = value
    groups = [{k: tuple(v) if isinstance(v, list) else v for k, v in g.items()} for g in info["param_groups"]]
    if len(groups) != 1:
        raise ValueError(f"{directory}: {len(groups)} optimizer parameter groups; learners have one")
    reference = directory / "reference.safetensors"
    state = State(
        model=_retied(load_file(str(directory / "model.safetensors")), tied),
        optimizer={"state": per_param, "param_groups": [{**groups[0], "params": list(parameter_names)}]},
        reference=_retied(load_file(str(reference)), tied) if reference.exists() else None,
    )
    torch.set_rng_state(saved["rng/torch"])
    cuda_states = [saved[k] for k in sorted(saved) if k.startswith("rng/cuda")]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    return state, info


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest `step-NNNNNN` directory under `root`, if any."""
    found = sorted(p for p in Path(root).glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
    return found[-1] if found else None
