"""`hillclimb optimize` run as a user runs it: the real CLI in a subprocess, output captured whole."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

REPO = Path(__file__).parents[2]


async def run_optimize(*args: str, timeout_s: float = 400) -> tuple[int, str]:
    """Exit status and everything printed (stdout and stderr together, 200 columns wide)."""
    process = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "orchestrator", "optimize", *args],
        cwd=REPO,
        env={**os.environ, "COLUMNS": "200"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=timeout_s)
    assert process.returncode is not None
    return process.returncode, output.decode()
