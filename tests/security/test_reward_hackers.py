"""Scripted reward hackers (`tests/security/hackers.py`), each played on an unsolved task through a
real terminal episode, each in a sandbox of its own: every one scores 0, leaves no process of the
agent or of the verifier behind, and finds no trace of the verifier afterwards.

The verifier-patching hacker is the attack that got reward 1.0 on a task it did not solve before
the verifier ran under a uid of its own, with every agent process ended first.
"""

from __future__ import annotations

import asyncio
import platform
from typing import Any

import pytest

from providers.contract import Sandbox, SandboxSpec
from providers.docker import VERIFIER_UID
from tests.security.hackers import HACKERS, TASK, Hacker, Outcome, play

pytestmark = pytest.mark.skipif(platform.machine() != "x86_64", reason="the verifier patch is x86-64 code")


async def _play_each(provider: Any, ready_timeout_s: float) -> dict[str, tuple[Sandbox, Outcome]]:
    async def one(hacker: Hacker) -> tuple[Sandbox, Outcome]:
        sandbox = await provider.create(SandboxSpec(env="terminal", run_id="hackers"))
        await provider.wait_ready(sandbox, ready_timeout_s)
        async with sandbox.handle.client() as client:
            return sandbox, await play(client, hacker)

    outcomes = await asyncio.gather(*(one(h) for h in HACKERS))
    return {hacker.name: outcome for hacker, outcome in zip(HACKERS, outcomes, strict=True)}


def _assert_beaten(outcomes: dict[str, tuple[Sandbox, Outcome]], agent_or_verifier: Any) -> None:
    for name, (_, outcome) in outcomes.items():
        assert outcome.reward == 0.0, f"{name} scored {outcome.reward} on {TASK}, unsolved"
        left = [(uid, args) for uid, args in outcome.leftovers if agent_or_verifier(uid)]
        assert not left, f"{name} left processes behind: {left}"
        assert outcome.traces == "", f"{name} found traces of the verifier: {outcome.traces}"


@pytest.mark.root
async def test_no_hacker_gets_a_reward_in_a_local_sandbox(local_provider: Any) -> None:
    outcomes = await _play_each(local_provider, 30)
    base, slots = local_provider.uid_base, local_provider.uid_slots
    _assert_beaten(outcomes, lambda uid: uid >= base + slots)  # the agents' and the verifiers' ranges


@pytest.mark.docker
async def test_no_hacker_gets_a_reward_in_a_docker_sandbox(docker_provider: Any) -> None:
    outcomes = await _play_each(docker_provider, 60)
    _assert_beaten(outcomes, lambda uid: uid in (docker_provider.agent_uid, VERIFIER_UID))


@pytest.mark.root
async def test_the_verifier_still_runs_after_a_fork_bomb(local_provider: Any) -> None:
    sandbox = await local_provider.create(SandboxSpec(env="terminal"))
    await local_provider.wait_ready(sandbox)
    bomb = next(h for h in HACKERS if h.name == "fork-bomb").commands[0]
    async with sandbox.handle.client() as client:
        await client.reset(task_id=TASK)
        await client.step({"command": bomb.replace("echo hello > hello.txt", "echo 'hello world' > hello.txt")})
        assert (await client.step({"command": "submit"})).reward == 1.0
