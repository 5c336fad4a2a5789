"""`PolicyServer`: one policy engine as a Ray actor, shared by every rollout worker.

Requests from all workers' episodes meet in one engine, so the engine batches across the
whole cluster; the learners push new weights to it once per step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hillclimb.config.policy import PolicyConfig
from hillclimb.config.rollout import SamplingParams
from trainers.policy.base import GenerateRequest, Generation
from trainers.policy.factory import make_policy


class PolicyServer:
    def __init__(self, config: PolicyConfig) -> None:
        self.policy = make_policy(config)

    async def generate(self, requests: list[GenerateRequest], sampling: SamplingParams) -> list[Generation]:
        return await self.policy.generate(requests, sampling)

    async def update_weights(self, version: int, weights: Mapping[str, Any]) -> None:
        await self.policy.update_weights(version, weights)

    def version(self) -> int:
        return self.policy.version


def start_policy_server(config: PolicyConfig) -> Any:
    import ray

    gpus = getattr(config, "gpus", 0.0)  # engines that hold no model here (scripted, openai) have none
    return ray.remote(num_cpus=0, num_gpus=gpus, max_concurrency=4096)(PolicyServer).remote(config)
