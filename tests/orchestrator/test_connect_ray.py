"""`connect_ray(None)` starts a Ray of its own: never one another process on this machine
started, nor a dead one that a killed run left behind in the temp dir's cluster file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray]

REPO = Path(__file__).parents[2]
START_AND_REPORT = (
    "import ray; from orchestrator.driver import connect_ray; "
    "print(connect_ray(None), ray.get_runtime_context().gcs_address, flush=True); ray.shutdown()"
)


def test_a_stale_cluster_file_from_a_killed_run_is_ignored() -> None:
    root = Path(tempfile.mkdtemp(prefix="hc-", dir="/tmp"))  # short: Ray's Unix sockets live there
    # What a run killed with SIGKILL leaves: the address of a GCS that no longer exists.
    (root / "ray").mkdir()
    (root / "ray" / "ray_current_cluster").write_text("127.0.0.1:9\n")
    env = {**os.environ, "RAY_TMPDIR": str(root)}
    env.pop("RAY_ADDRESS", None)
    try:
        result = subprocess.run(
            [sys.executable, "-c", START_AND_REPORT], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    assert result.returncode == 0, result.stderr[-2000:]
    mode, gcs = result.stdout.split()[-2:]
    assert mode == "local" and gcs != "127.0.0.1:9"
