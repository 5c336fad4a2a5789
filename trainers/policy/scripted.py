"""`ScriptedPolicy`: the task suites' oracles as a policy, for tests and benchmarks.

It replays each task's oracle action for the episode's turn, deterministically, with
log-prob 0 (probability 1). With it every built-in task is solved, so pass@1 is 1.0:
the yardstick for the platform itself, independent of any model.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from functools import cache
from typing import Any

from envs.authoring.registry import load_suite
from envs.authoring.tasks import Task, every_task, require_oracles
from hillclimb.config.rollout import SamplingParams
from trainers.policy.base import GenerateRequest, Generation
from trainers.tokenizer import ByteTokenizer, Tokenizer


@cache
def _tasks(env: str) -> dict[str, Task]:
    tasks = every_task(load_suite(env))
    require_oracles(tasks, "the scripted policy", "use a model policy (any policy.type but scripted)")
    return {task.id: task for task in tasks}


class ScriptedPolicy:
    """Emits the oracle's action for (task, turn); past the oracle's end it repeats the last one."""

    def __init__(self, tokenizer: Tokenizer | None = None) -> None:
        self._tokenizer = tokenizer or ByteTokenizer()
        self._version = 0

    @property
    def version(self) -> int:
        return self._version

    @property
    def tokenizer(self) -> Tokenizer:
        return self._tokenizer

    async def generate(self, requests: list[GenerateRequest], sampling: SamplingParams) -> list[Generation]:
        return [self._one(request, sampling) for request in requests]

    def _one(self, request: GenerateRequest, sampling: SamplingParams) -> Generation:
        if request.episode is None:
            raise ValueError("the scripted policy needs each request's EpisodeInfo (env, task, turn)")
        info = request.episode
        oracle = _tasks(info.env)[info.task_id].oracle
        ids = self._tokenizer.encode(oracle[min(info.turn, len(oracle) - 1)])
        if sampling.stop_token_ids:
            ids.append(sampling.stop_token_ids[0])
        return Generation(token_ids=tuple(ids), logprobs=(0.0,) * len(ids), finish_reason="stop", version=self._version)

    @property
    def dtype(self) -> None:
        return None  # no weights: a publish sends them as the learner holds them

    async def update_weights(self, version: int, weights: Mapping[str, Any]) -> None:
        self._version = version

    async def update_weights_in_buckets(self, version: int, buckets: AsyncIterator[Mapping[str, Any]]) -> None:
        async for _ in buckets:  # taken, so the publisher sees every bucket delivered
            pass
        self._version = version
