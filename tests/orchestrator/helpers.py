"""Stand-ins for orchestrator tests: policies that hold their turns, a policy server, actors whose metrics fail."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from hillclimb.config.policy import PolicyConfig
from hillclimb.config.rollout import SamplingParams
from orchestrator.policy_server import PolicyServer
from trainers.policy.base import GenerateRequest, Generation
from trainers.policy.scripted import ScriptedPolicy


class SlowScriptedPolicy(ScriptedPolicy):
    """The oracle, taking `delay_s` per turn: keeps episodes in flight long enough to kill things."""

    def __init__(self, delay_s: float) -> None:
        super().__init__()
        self.delay_s = delay_s

    async def generate(self, requests: list[GenerateRequest], sampling: SamplingParams) -> list[Generation]:
        await asyncio.sleep(self.delay_s)
        return await super().generate(requests, sampling)


class GatedScriptedPolicy(ScriptedPolicy):
    """The oracle, holding each turn until the file `gate` exists (a file, so that Ray workers'
    processes see it too): keeps a run live until the test has seen what it needs, not a timed race.
    No turn waits past `max_wait_s`, so a test that never opens the gate still ends."""

    def __init__(self, gate: Path, max_wait_s: float = 120.0) -> None:
        super().__init__()
        self.gate = gate
        self.max_wait_s = max_wait_s

    async def generate(self, requests: list[GenerateRequest], sampling: SamplingParams) -> list[Generation]:
        deadline = time.monotonic() + self.max_wait_s
        while not self.gate.exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return await super().generate(requests, sampling)


class PolicyServerStandIn:
    """A policy server that echoes each prompt's last token, records its calls, and refuses any
    call holding a prompt that starts with 13 (as an engine refuses a prompt it cannot take)."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, float]] = []

    async def generate(self, requests: list[GenerateRequest], sampling: SamplingParams) -> list[Generation]:
        self.calls.append((len(requests), sampling.temperature))
        if any(r.prompt_ids[0] == 13 for r in requests):
            raise ValueError("prompt 13 is refused on purpose")
        return [
            Generation(token_ids=(r.prompt_ids[-1],), logprobs=(0.0,), finish_reason="stop", version=3)
            for r in requests
        ]

    def seen(self) -> list[tuple[int, float]]:
        return self.calls


class StuckMetrics:
    """An actor whose metrics never come in time (a worker whose loop is blocked)."""

    async def metrics(self) -> list[object]:
        await asyncio.sleep(30)
        return []


class FailingMetrics:
    """An actor whose metrics call fails (a worker whose registry broke)."""

    def metrics(self) -> list[object]:
        raise ValueError("registry is broken")


class GatedPolicyServer(PolicyServer):
    """A policy server that starts loading a publish only once `gate` exists (a slow engine)."""

    def __init__(self, config: PolicyConfig, gate: Path) -> None:
        super().__init__(config)
        self.gate = gate

    async def update_weights_in_buckets(self, version: int, buckets: list[Any]) -> None:
        while not self.gate.exists():
            await asyncio.sleep(0.01)
        await super().update_weights_in_buckets(version, buckets)


class HungPolicyServer:
    """An engine that never finishes loading (a stuck GPU, a dead worker behind it)."""

    def weights_dtype(self) -> None:
        return None

    async def update_weights_in_buckets(self, version: int, buckets: list[Any]) -> None:
        await asyncio.sleep(3600)
