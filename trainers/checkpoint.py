"""Checkpoints in torch.distributed.checkpoint (DCP) form: every rank writes its own shard, and
any world size or strategy (one process, DDP, FSDP) reads them back.

    <dir>/state/.metadata           DCP's index of every tensor's chunks (rank 0 writes it last)
    <dir>/state/__<rank>_0.distcp   what rank <rank> wrote: its shards of the model (`model.*`),
                                    optimizer (`optimizer.*`) and KL reference (`reference.*`);
                                    replicated tensors (DDP) once, from whichever rank DCP picks;
                                    and its own RNG states (`rng.rank<rank>.*`)
    <dir>/trainer.json              step, policy version, adapters, the world size and strategy
                                    that wrote it, extras

No rank gathers the whole state: under FSDP each writes the shards it holds, and reading
reshards them onto the reader's ranks (DCP matches chunks by offset). `read_weights` reads the
model alone, whole, in one process with no process group (`hillclimb model export`, tests).

The directory must be on storage every rank reaches (the run directory; on Kubernetes the
learner pods mount the run-dir volume the driver does). Written to `<dir>.tmp`, which rank 0
renames once every rank has written, so a checkpoint directory is whole or absent.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from hillclimb.errors import ConfigError

STATE = "state"
INFO = "trainer.json"


class CheckpointError(ConfigError):
    """A directory that is not a checkpoint this version can read."""


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


@contextmanager
def _one_process_allowed() -> Iterator[None]:
    """DCP warns whenever it runs without a process group, which one process (a learner of
    world size 1, an export) does by design."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        yield


def _barrier() -> None:
    if _distributed():
        dist.barrier()


def rng_state() -> dict[str, torch.Tensor]:
    """This process's RNG states (CPU, and the current GPU's)."""
    states = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def set_rng_state(states: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])


def save_checkpoint(directory: str | Path, state: dict[str, Any], *, rank: int, **info: Any) -> Path:
    """Write `state` (every rank its own part: sharded tensors, or replicated ones DCP writes
    once) under `directory`, and `info` as trainer.json. Every rank calls it; each returns once
    the checkpoint is committed."""
    final = Path(directory)
    tmp = final.with_name(final.name + ".tmp")
    if rank == 0:  # a crashed save's leftovers, cleared before anyone writes
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    with _one_process_allowed():
        dcp.save(state, checkpoint_id=tmp / STATE)  # returns once every rank's files are written
    if rank == 0:
        (tmp / INFO).write_text(json.dumps(info, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    _barrier()  # nobody reports a checkpoint that is not there yet
    return final


def read_info(directory: str | Path) -> dict[str, Any]:
    """trainer.json of the checkpoint in `directory`; refuses one of the layout before DCP."""
    directory = Path(directory)
    if not (directory / STATE / ".metadata").is_file():
        old = (directory / "model.safetensors").exists()
        why = "written before sharded checkpoints: model.safetensors" if old else "no state/.metadata"
        raise CheckpointError(
            f"{directory} is no checkpoint this version reads ({why}): "
            "resume from a newer checkpoint, or start the run over with run.resume=false"
        )
    return json.loads((directory / INFO).read_text())


def load_checkpoint(directory: str | Path, state: dict[str, Any]) -> dict[str, Any]:
    """Fill `state`'s tensors in place from the checkpoint (each rank the shards it holds,
    whatever the writers held) and return its trainer.json. Every rank calls it."""
    info = read_info(directory)
    with _one_process_allowed():
        dcp.load(state, checkpoint_id=Path(directory) / STATE)
    return info


def read_weights(directory: str | Path, prefix: str = "model") -> dict[str, torch.Tensor]:
    """The whole model (`prefix="model"`) of a checkpoint as CPU tensors by parameter name, read
    in this process alone: no process group, whatever wrote it. With LoRA, the adapters."""
    read_info(directory)
    reader = FileSystemReader(Path(directory) / STATE)
    start = prefix + "."
    tensors = {
        key[len(start) :]: torch.empty(meta.size, dtype=meta.properties.dtype)
        for key, meta in reader.read_metadata().state_dict_metadata.items()
        if key.startswith(start) and isinstance(meta, TensorStorageMetadata)
    }
    with _one_process_allowed():
        dcp.load({prefix: tensors}, storage_reader=reader, no_dist=True)
    return tensors


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest `step-NNNNNN` directory under `root`, if any."""
    found = sorted(p for p in Path(root).glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
    return found[-1] if found else None
