"""`hillclimb sandbox ls` on a narrow terminal: the ids `sandbox rm` needs stay whole."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from providers.contract import SandboxSpec
from providers.local import LocalProvider

REPO = Path(__file__).parents[2]


@pytest.mark.root
async def test_full_ids_at_80_columns(local_provider: LocalProvider, sandbox_root: Path) -> None:
    spec = SandboxSpec(env="toy_terminal", run_id="a-run-with-a-rather-long-name-for-its-sandboxes")
    sandbox = await local_provider.create(spec)
    try:
        listed = subprocess.run(
            [sys.executable, "-m", "orchestrator", "sandbox", "ls", "-o", f"root={sandbox_root}"],
            cwd=REPO, capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "80"},
        )  # fmt: skip
    finally:
        await local_provider.destroy(sandbox.id)
    assert listed.returncode == 0, listed.stderr
    assert max(len(line) for line in listed.stdout.splitlines()) <= 80
    assert sandbox.id in listed.stdout, listed.stdout
