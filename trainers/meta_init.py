"""Sharded learners start from a model no rank holds whole on its device.

    every rank: load_model_skeleton ─► the model on `meta` (shapes, no storage)
                ─► fully_shard per layer, then the root (`Learner._distribute`)
    rank 0:     load_model on the CPU, the whole model once in host memory, its LM head checked
    every rank: to_empty(device) ─► set_model_state_dict(full, broadcast_from_rank0): rank 0 sends
                each tensor in turn, every rank keeps its shard ─► non-persistent buffers
                (rotary frequencies, in no state dict) sent by rank 0 too

So a rank's device only ever holds its shards (loading the whole model on every GPU before
sharding put a 7B model's 28 GB of fp32 weights on each, and refused any model larger than one
GPU), and ranks other than 0 read no weight file. Tied weights stay tied: the skeleton ties them as the model
does, and FSDP materialises the one shared parameter in place.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

from hillclimb.config.models import ModelConfig
from trainers.models.head import check_lm_head
from trainers.models.load import load_model, load_model_skeleton
from trainers.tokenizer import Tokenizer


@dataclasses.dataclass
class Pretrained:
    """The weights a skeleton is filled with: rank 0's, full, on the CPU; empty on other ranks."""

    state: dict[str, torch.Tensor]
    """The model's state dict (parameters and persistent buffers)."""
    buffers: dict[str, torch.Tensor]
    """Its non-persistent buffers, which `to_empty` leaves as garbage and no state dict holds."""


def skeleton(model_config: ModelConfig, rank: int) -> tuple[Any, Tokenizer, Pretrained]:
    """The model on `meta` and its tokenizer, on every rank; and on rank 0 the weights to fill it
    with (read from disk there alone)."""
    model, tokenizer = load_model_skeleton(model_config)
    if rank != 0:
        return model, tokenizer, Pretrained({}, {})
    full, _ = load_model(model_config, "cpu")
    check_lm_head(full)  # the losses apply the head themselves: its logits must be hidden · Wᵀ + b
    state = full.state_dict()
    buffers = {name: buffer for name, buffer in full.named_buffers() if name not in state}
    return model, tokenizer, Pretrained(state, buffers)


def materialise(root: torch.nn.Module, model: torch.nn.Module, pretrained: Pretrained, device: torch.device) -> None:
    """Give the sharded skeleton `root` (around `model`) storage on `device` and rank 0's weights
    (every rank at once: the broadcasts are collectives)."""
    root.to_empty(device=device)
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(model, pretrained.state, options=options)
    buffers = [pretrained.buffers]
    dist.broadcast_object_list(buffers, src=0)
    with torch.no_grad():
        for name, value in buffers[0].items():
            model.get_buffer(name).copy_(value)
