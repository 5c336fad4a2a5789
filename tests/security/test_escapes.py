"""Nothing an agent starts outlives the step that started it, `setsid` or not.

A process in a session of its own escapes its command's process-group kill; if it lived
on, it could rewrite the episode's files while the verifier reads them, or hold the
sandbox's resources for the next episode.
"""

from __future__ import annotations

from typing import Any

import pytest

from providers.contract import Sandbox, SandboxSpec

# The escapee writes its pid whole (by a rename) and the step waits for it, rather than for a fixed
# 0.2 s a loaded host may not give a fork; 9 s at most, within the terminal's 10 s command limit.
ESCAPE = (
    "setsid -f sh -c 'echo $$ > escapee.tmp && mv escapee.tmp escapee.pid; exec sleep 600'; "
    "i=0; while [ ! -s escapee.pid ] && [ $i -lt 90 ]; do sleep 0.1; i=$((i+1)); done; cat escapee.pid"
)
CHECK = "if kill -0 $(cat escapee.pid) 2>/dev/null; then echo alive; else echo gone; fi"


async def _escape_then_check(sandbox: Sandbox) -> tuple[str, str]:
    async with sandbox.handle.client() as env:
        await env.reset(seed=0)
        started = (await env.step({"command": ESCAPE})).observation["output"]
        after = (await env.step({"command": CHECK})).observation["output"]
    return started, after


@pytest.mark.root
async def test_a_setsid_process_dies_with_its_step_in_a_local_sandbox(local_provider: Any) -> None:
    sandbox = await local_provider.create(SandboxSpec(env="terminal"))
    await local_provider.wait_ready(sandbox)
    started, after = await _escape_then_check(sandbox)
    assert started.strip().isdigit(), started  # the escape itself ran
    assert after.strip() == "gone"


@pytest.mark.docker
async def test_a_setsid_process_dies_with_its_step_in_a_docker_sandbox(docker_provider: Any) -> None:
    sandbox = await docker_provider.create(SandboxSpec(env="terminal"))
    await docker_provider.wait_ready(sandbox, timeout_s=60)
    started, after = await _escape_then_check(sandbox)
    assert started.strip().isdigit(), started
    assert after.strip() == "gone"
