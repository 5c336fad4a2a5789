"""`LearnerGroup`: the learner ranks as Ray actors, placed, met in one process group, driven.

    driver ──train_step(DealtBatch of references)──► Learner rank 0..N-1 (trainers.learner)
              each rank receives its share from the buffer's object store, never through here
           ◄── metrics, merged;  weights: a reference to rank 0's, for the policy engines

Placement: ranks that reserve resources (`gpus_per_learner`, `cpus_per_learner`,
`resources_per_learner`) get one bundle each of a Ray placement group, packed or spread over
nodes; they meet at rank 0's node address, and each trains on the GPU Ray assigned it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from hillclimb.config.learner import LearnerConfig
from hillclimb.config.models import ModelConfig
from trainers.batching import DealtBatch
from trainers.learner import Learner, merge_metrics

_PLACEMENT_TIMEOUT_S = 300.0


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

    async def _meet(self) -> None:
        if self._placement_group is not None:
            try:
                await asyncio.wait_for(self._placement_group.ready(), _PLACEMENT_TIMEOUT_S)
            except TimeoutError:
                wanted = f"{len(self.ranks)} learners of {_bundle(self.config)} each ({self.config.placement})"
                raise RuntimeError(
                    f"the cluster found no room for {wanted} within {_PLACEMENT_TIMEOUT_S:g} s; "
                    f"free now: {ray.available_resources()}"
                ) from None
        if len(self.ranks) > 1:
            address = await self.ranks[0].rendezvous_address.remote()
            await asyncio.gather(*(rank.join.remote(address) for rank in self.ranks))

    async def placement(self) -> list[dict[str, Any]]:
        """Where each rank runs (node and device), in rank order."""
        await self.ready()
        return list(await asyncio.gather(*(rank.placement.remote() for rank in self.ranks)))

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
        return merge_metrics([await r for r in results])

    def _gatherers(self) -> list[Any]:
        """The ranks that take part in gathering the full weights: all when sharded, else rank 0."""
        return self.ranks if self.config.strategy == "fsdp" else self.ranks[:1]

    async def weights_ref(self) -> Any:
        """A Ray reference to the full weights, which stay in rank 0's node's object store: an
        actor handed it as an argument receives them from there, never through this process."""
        await self.ready()
        refs = [rank.weights.remote() for rank in self._gatherers()]
        await asyncio.gather(*refs[1:])  # the other ranks' part of the gather (they receive nothing)
        return refs[0]

    async def weights(self) -> dict[str, Any]:
        return await (await self.weights_ref())

    async def env_cross_entropy(self, shares: list[Any]) -> float:
        """Mean CE of the ENV tokens in the ranks' shares (lists of samples, or references to them)."""
        await self.ready()
        parts = await asyncio.gather(*(r.env_log_likelihood.remote(s) for r, s in zip(self.ranks, shares, strict=True)))
        return -sum(ll for ll, _ in parts) / max(sum(n for _, n in parts), 1)

    async def save(self, directory: str, **info: Any) -> str:
        """Every rank writes its part of the checkpoint to `directory`, which all must reach."""
        await self.ready()
        paths = await asyncio.gather(*(rank.save.remote(directory, **info) for rank in self.ranks))
        return paths[0]

    async def load(self, directory: str) -> dict[str, Any]:
        await self.ready()
        infos = await asyncio.gather(*(rank.load.remote(directory) for rank in self.ranks))  # a collective
        return infos[0]

    def shutdown(self) -> None:
        for rank in self.ranks:
            ray.kill(rank)
        if self._placement_group is not None:
            remove_placement_group(self._placement_group)
