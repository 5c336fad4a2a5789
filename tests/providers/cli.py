"""The sandbox commands as a user runs them, against a provider a test serves meanwhile."""

from __future__ import annotations

import asyncio
import os
import sys


async def sandbox_cli(*args: str) -> tuple[int, str]:
    """`hillclimb sandbox ...` in a child process (the emulated server keeps serving meanwhile)."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "orchestrator", "sandbox", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    out, _ = await child.communicate()
    return child.returncode or 0, out.decode()
