"""`LearnerGroup`: the learner ranks as Ray actors, placed, met in one process group, driven.

    driver ──train_step(DealtBatch of references)──► Learner rank 0..N-1 (trainers.learner)
              each rank receives its share from the buffer's object store, never through here
           ◄── metrics, merged;  weights: references to rank 0's buckets, for the policy engines

Placement: ranks that reserve resources (`gpus_per_learner`, `cpus_per_learner`,
`resources_per_learner`) get one bundle each of a Ray placement group, packed or spread over
nodes; they meet at rank 0's node address, and each trains on the GPU Ray assigned it.

Failure: a call on every rank fails as soon as one rank fails, with a `LearnerRankError` that
names it; the ranks it left waiting in a collective fail there after `collective_timeout_s`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from hillclimb.config.learner import LearnerConfig
from hillclimb.config.models import ModelConfig
from hillclimb.errors import HillclimbError
from trainers.batching import DealtBatch
from trainers.learner import Learner, merge_metrics

_PLACEMENT_TIMEOUT_S = 300.0


class LearnerRankError(HillclimbError, RuntimeError):
    """A learner rank failed (raised, or its process died); `rank` and `call` say which and where."""

    rank: int = -1
    call: str = ""


async def _on_every_rank(call: str, refs: list[Any], ranks: range | None = None) -> list[Any]:
    """The results of `call` on the ranks (`refs`, from `ranks`, all by default), in rank order.
    The first rank to fail fails the whole call at once, named: the others may be waiting for it
    in a collective, and would keep the caller waiting until their timeout."""
    ranks = ranks if ranks is not None else range(len(refs))
    tasks = [asyncio.ensure_future(ref) for ref in refs]
    try:
        if tasks:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for rank, task in zip(ranks, tasks, strict=True):
            if task.done() and task.exception() is not None:
                error = task.exception()
                cause = getattr(error, "cause", None) or error  # a RayTaskError carries the rank's own exception
                raise LearnerRankError(
                    f"learner rank {rank} failed in {call}: {type(cause).__name__}: {str(cause)[:2000]}",
                    rank=rank,
                    call=call,
                ) from error
        return [task.result() for task in tasks]
    finally:
        unfinished = [task for task in tasks if not task.done()]
        for task in unfinished:  # stop waiting; the ranks themselves fail at their timeout or shutdown
            task.cancel()
        await asyncio.gather(*unfinished, return_exceptions=True)


def _bundle(config: LearnerConfig) -> dict[str, float]:
    """What one rank reserves: its placement-group bundle (empty when it reserves nothing)."""
    bundle = {"CPU": config.cpus_per_learner, "GPU": config.gpus_per_learner, **config.resources_per_learner}
    return {name: amount for name, amount in bundle.items() if amount}


class LearnerGroup:
    """N learner ranks as Ray actors; rank 0 speaks for the group (weights, a checkpoint's path).

    The ranks load their models as soon as they are made; the first call waits until they
    have, and until they met in one process group."""

    def __init__(self, model_config: ModelConfig, config: LearnerConfig) -> None:
        self.config = config
        world = config.num_learners
        bundle = _bundle(config)
        self._placement_group = placement_group([bundle] * world, strategy=config.placement.upper()) if bundle else None
        actor = ray.remote(
            num_cpus=config.cpus_per_learner,
            num_gpus=config.gpus_per_learner,
            resources=config.resources_per_learner or None,
        )(Learner)
        self.ranks = [
            actor.options(
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    self._placement_group, placement_group_bundle_index=r
                )
                if self._placement_group
                else None
            ).remote(model_config, config, rank=r, world_size=world)
            for r in range(world)
        ]
        self._met: asyncio.Future[None] | None = None

    @property
    def world_size(self) -> int:
        return len(self.ranks)

    async def ready(self) -> None:
        """Wait until the ranks are placed and, when several, loaded and joined in one group."""
        if self._met is None:
            self._met = asyncio.ensure_future(self._meet())
        await asyncio.shield(self._met)

    async def reserved(self) -> None:
        """Wait until the ranks' placement group holds its resources: whatever asks for GPUs
        after this (the policy engine) gets none of theirs."""
        if self._placement_group is not None:
            try:
                await asyncio.wait_for(self._placement_group.ready(), _PLACEMENT_TIMEOUT_S)
            except TimeoutError:
                wanted = f"{len(self.ranks)} learners of {_bundle(self.config)} each ({self.config.placement})"
                raise RuntimeError(
                    f"the cluster found no room for {wanted} within {_PLACEMENT_TIMEOUT_S:g} s; "
                    f"free now: {ray.available_resources()}"
                ) from None

    async def _meet(self) -> None:
        await self.reserved()
        if len(self.ranks) > 1:
            address = await self.ranks[0].rendezvous_address.remote()
            await _on_every_rank("join", [rank.join.remote(address) for rank in self.ranks])

    async def placement(self) -> list[dict[str, Any]]:
        """Where each rank runs (node and device), in rank order."""
        await self.ready()
        return await _on_every_rank("placement", [rank.placement.remote() for rank in self.ranks])

    async def train_step(
        self, batch: DealtBatch, step: int, *, imitate: bool = False, lr_scale: float = 1.0
    ) -> dict[str, float]:
        """One optimizer step, each rank on its share of `batch` (see `Learner.train_step`)."""
        await self.ready()
        results = [
            rank.train_step.remote(
                share,
                batch.totals,
                step,
                imitate=imitate,
                anchor=extra,
                anchor_totals=batch.anchor_totals,
                lr_scale=lr_scale,
            )
            for rank, share, extra in zip(self.ranks, batch.shares, batch.anchor_shares, strict=True)
        ]
        return merge_metrics(await _on_every_rank("train_step", results))

    def _gatherers(self) -> list[Any]:
        """The ranks that take part in gathering the full weights: all when sharded, else rank 0."""
        return self.ranks if self.config.strategy == "fsdp" else self.ranks[:1]

    def weight_buckets(self, dtype: Any, bucket_bytes: float) -> Awaitable[list[Any]]:
        """References to the weights in buckets (`Learner.weight_buckets`), which stay in rank 0's
        node's object store: an engine fetches each from there, never through this process.

        The ranks are asked at once, before this returns: the buckets hold the weights as they
        are now, even when a `train_step` is called before the references are awaited. Call it
        once the group is ready (after any awaited call)."""
        assert self._met is not None and self._met.done(), "weight_buckets before the ranks met"
        streams = [
            rank.weight_buckets.options(num_returns="streaming").remote(dtype, bucket_bytes)
            for rank in self._gatherers()
        ]
        return _references(streams)

    async def weights(self) -> dict[str, Any]:
        """The full weights, here (for inspection and tests)."""
        await self.ready()
        buckets = await asyncio.gather(*await self.weight_buckets(None, float("inf")))
        return {name: tensor for bucket in buckets for name, tensor in bucket.items()}

    async def env_cross_entropy(self, shares: list[Any]) -> float:
        """Mean CE of the ENV tokens in the ranks' shares (lists of samples, or references to them)."""
        await self.ready()
        calls = [r.env_log_likelihood.remote(s) for r, s in zip(self.ranks, shares, strict=True)]
        parts = await _on_every_rank("env_log_likelihood", calls)
        return -sum(ll for ll, _ in parts) / max(sum(n for _, n in parts), 1)

    async def save(self, directory: str, **info: Any) -> str:
        """Every rank writes its part of the checkpoint to `directory`, which all must reach."""
        await self.ready()
        paths = await _on_every_rank("save", [rank.save.remote(directory, **info) for rank in self.ranks])
        return paths[0]

    async def load(self, directory: str) -> dict[str, Any]:
        await self.ready()
        infos = await _on_every_rank("load", [rank.load.remote(directory) for rank in self.ranks])  # a collective
        return infos[0]

    def shutdown(self) -> None:
        for rank in self.ranks:
            ray.kill(rank)
        if self._placement_group is not None:
            remove_placement_group(self._placement_group)


async def _references(streams: list[Any]) -> list[Any]:
    """Rank 0's bucket references, once every rank's generator has finished (the other ranks yield
    none: they only take part in the gathers); a rank's failure is raised here. Waiting for the end
    first matters: Ray's async iteration fetches a bucket not yet made into this process."""
    await _on_every_rank("weight_buckets", [stream.completed() for stream in streams])
    return [ref async for ref in streams[0]]
