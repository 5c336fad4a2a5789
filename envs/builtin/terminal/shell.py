"""Run one command in a fresh `bash -c`, as the agent (see `envs.sandbox.run_as`).

result = await run_command("sort names.txt", cwd, timeout_s=10, output_limit=16384)
"""

from __future__ import annotations

from envs.sandbox.run_as import CommandResult, run_as


async def run_command(command: str, cwd: str, *, timeout_s: float, output_limit: int) -> CommandResult:
    return await run_as("agent", ["bash", "-c", "--", command], cwd, timeout_s=timeout_s, output_limit=output_limit)
