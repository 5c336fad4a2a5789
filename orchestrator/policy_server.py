"""`PolicyServer`: one policy engine as a Ray actor, shared by every rollout worker.

Requests from all workers' episodes meet in one engine, so the engine batches across the
whole cluster; the learners publish new weights to it once per step (`orchestrator.weight_sync`),
in buckets it fetches from the object store one at a time. With `policy.engines` > 1 there are
that many servers (data parallel): `PolicyServerClient` spreads the episodes over them, and every
publish reaches each.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

from hillclimb.config.policy import PolicyConfig
from hillclimb.config.rollout import SamplingParams
from trainers.policy.base import BucketedWeights, GenerateRequest, Generation
from trainers.policy.errors import WeightsNotUpdatableError
from trainers.policy.factory import make_policy


class PolicyServer:
    def __init__(self, config: PolicyConfig) -> None:
        self.policy = make_policy(config)

    async def generate(self, requests: list[GenerateRequest], sampling: SamplingParams) -> list[Generation]:
        return await self.policy.generate(requests, sampling)

    async def update_weights(self, version: int, weights: Mapping[str, Any]) -> None:
        await self.policy.update_weights(version, weights)

    def weights_dtype(self) -> Any:
        """The torch dtype the engine's weights are in (None: any), which a publish casts to."""
        return self._bucketed().dtype

    async def update_weights_in_buckets(self, version: int, buckets: list[Any]) -> None:
        """Load one publish: `buckets` are references to its parts (in a list, so Ray leaves them
        unresolved), each fetched only when the engine is ready to load it."""
        policy = self._bucketed()

        async def fetched() -> AsyncIterator[Mapping[str, Any]]:
            for ref in buckets:
                yield await ref

        await policy.update_weights_in_buckets(version, fetched())

    def version(self) -> int:
        return self.policy.version

    def _bucketed(self) -> BucketedWeights:
        if not isinstance(self.policy, BucketedWeights):
            raise WeightsNotUpdatableError(f"a {type(self.policy).__name__} engine cannot load published weights")
        return self.policy


def start_policy_servers(config: PolicyConfig) -> list[Any]:
    """`policy.engines` servers (one for engines that have no such key), each reserving `policy.gpus`."""
    import ray

    gpus = getattr(config, "gpus", 0.0)  # engines that hold no model here (scripted, openai) have none
    server = ray.remote(num_cpus=0, num_gpus=gpus, max_concurrency=4096)(PolicyServer)
    return [server.remote(config) for _ in range(getattr(config, "engines", 1))]
