"""The adversary of these tests: an agent running arbitrary commands in its sandbox."""

from __future__ import annotations

from providers.contract import Sandbox

SERVER_PIDS = (
    "for p in /proc/[0-9]*; do u=$(sed -n 's/^Uid:[[:space:]]*\\([0-9]*\\).*/\\1/p' $p/status 2>/dev/null);"
    ' [ -n "$u" ] && [ "$u" != 0 ] && [ "$u" != "$(id -u)" ] && echo ${p#/proc/}; done'
)
"""Shell: the pids of processes under neither root nor the agent's uid, i.e. the env server."""


async def run_as_agent(sandbox: Sandbox, command: str) -> str:
    """Run `command` as the agent would (a step of the `terminal` environment); its output."""
    async with sandbox.handle.client() as env:
        await env.reset(seed=0)
        observation = (await env.step({"command": command})).observation
    return observation["output"]
