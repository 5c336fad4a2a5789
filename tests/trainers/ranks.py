"""Learner ranks in processes of their own (spawned, gloo over a file rendezvous), without Ray,
so a test can look at a rank before it joins and at what it holds after: one `Job` for every
rank, each rank's `RankResult` back (full tensors from rank 0, which the gathers give them to)."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp
from learner_data import batch_of_step
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

from hillclimb.config.learner import LearnerConfig
from hillclimb.config.models import ModelConfig
from trainers.batching import deal
from trainers.learner import Learner


@dataclasses.dataclass(frozen=True)
class Job:
    load: str | None = None
    """A checkpoint every rank loads after joining."""
    steps: tuple[int, ...] = ()
    """The RL steps (`learner_data.batch_of_step`) trained after loading, each dealt to the ranks."""
    save: str | None = None
    """Where every rank saves a checkpoint after training."""


@dataclasses.dataclass
class RankResult:
    rank: int
    devices_before_join: set[str]
    """Where the rank's parameters were when it was made: `meta` holds no storage."""
    initial: dict[str, torch.Tensor]
    """The full model on rank 0 once joined (and loaded), before training (empty elsewhere)."""
    losses: list[float]
    """This rank's share of each step's loss (the ranks' add up to the step's)."""
    weights: dict[str, torch.Tensor]
    """The full model on rank 0 (empty elsewhere)."""
    optimizer: dict[str, Any]
    """The full optimizer state dict on rank 0 (`{"state": {name: {...}}, "param_groups": [...]}`)."""
    mesh: tuple[int, ...] = ()
    """The shape of the device mesh a sharded parameter lives on (empty when not sharded)."""


def full_state(learner: Learner) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The learner's full weights and optimizer state on CPU (rank 0's; a collective when sharded)."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = {k: v.detach().cpu().clone() for k, v in get_model_state_dict(learner.model, options=options).items()}
    return weights, get_optimizer_state_dict(learner.model, learner.optimizer, options=options)


def _rank(rank: int, model: ModelConfig, config: LearnerConfig, init_method: str, job: Job, out: str) -> None:
    learner = Learner(model, config, rank=rank, world_size=config.num_learners)
    devices = {p.device.type for p in learner.model.parameters()}
    if config.num_learners > 1:
        learner.join(init_method)
    if job.load is not None:
        learner.load(job.load)
    initial, _ = full_state(learner)
    losses = []
    for step in job.steps:
        dealt = deal(batch_of_step(step), learner.world_size)
        losses.append(learner.train_step(dealt.shares[rank], dealt.totals, step)["loss"])
    if job.save is not None:
        learner.save(job.save, step=len(job.steps), version=len(job.steps))
    weights, optimizer = full_state(learner)
    if rank != 0:  # the gathers gave rank 0 alone the tensors
        initial, weights, optimizer = {}, {}, {}
    parameter = next(learner.model.parameters())
    mesh = tuple(parameter.device_mesh.shape) if hasattr(parameter, "device_mesh") else ()
    result = RankResult(rank, devices, initial, losses, weights, optimizer, mesh)
    torch.save(result, Path(out) / f"result-{rank}.pt")


def run_ranks(model: ModelConfig, config: LearnerConfig, job: Job, scratch: Path) -> list[RankResult]:
    """Run `job` on `config.num_learners` ranks (in this process when one) and return their results."""
    out = scratch / f"ranks-{uuid.uuid4().hex[:8]}"
    out.mkdir(parents=True)
    init_method = f"file://{out / 'rendezvous'}"
    if config.num_learners == 1:
        _rank(0, model, config, init_method, job, str(out))
    else:
        mp.start_processes(
            _rank, args=(model, config, init_method, job, str(out)), nprocs=config.num_learners, start_method="spawn"
        )
    return [torch.load(out / f"result-{r}.pt", weights_only=False) for r in range(config.num_learners)]
