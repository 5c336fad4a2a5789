"""The cluster path: `ray job submit ... -- python -m orchestrator rollout CONFIG` against a
head node started with `ray start --head` on this machine (loopback only)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from envs.toy_terminal.tasks import SUITE

pytestmark = [
    pytest.mark.ray,
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="local sandboxes with per-sandbox uids need root"),
]

REPO = Path(__file__).parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def head_node() -> Iterator[tuple[str, dict[str, str]]]:
    bin_dir = str(Path(sys.executable).parent)
    # The job's `python` must be this environment's; Ray 2.5x enables token auth by default.
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    dashboard = _free_port()
    start = [
        f"{bin_dir}/ray",
        "start",
        "--head",
        "--disable-usage-stats",
        "--num-cpus=2",
        "--node-ip-address=127.0.0.1",
        f"--port={_free_port()}",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}",
    ]
    subprocess.run(start, env=env, check=True, capture_output=True, timeout=120)
    try:
        yield f"http://127.0.0.1:{dashboard}", env
    finally:
        subprocess.run([f"{bin_dir}/ray", "stop", "--force"], env=env, capture_output=True, timeout=120)


def _submit_when_agent_is_up(submit: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`ray start` returns before the node's dashboard agent registers; until it does, the
    head answers 500 "No available agent to submit job, please try again later"."""
    deadline = time.monotonic() + 120
    while True:
        result = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=300)
        if "No available agent" not in result.stderr or time.monotonic() > deadline:
            return result
        time.sleep(2)


def test_ray_job_submit_runs_a_rollout_on_the_cluster(head_node: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    address, env = head_node
    submit = [
        str(Path(sys.executable).parent / "ray"),
        "job",
        "submit",
        "--address",
        address,
        "--working-dir",
        str(REPO),
        "--",
        "python",
        "-m",
        "orchestrator",
        "rollout",
        "configs/rollout_toy.yaml",
        "--set",
        f"run.dir={tmp_path}",
        "--set",
        "rollout.group_size=1",
        "--set",
        "eval.k=[1]",
        "--set",
        "env.eval_splits=[heldout]",
    ]
    result = _submit_when_agent_is_up(submit, env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "succeeded" in output and "Connecting to existing Ray cluster" in output
    heldout = len(SUITE.tasks("heldout"))
    assert re.search(rf"│ heldout │ {heldout} +│ {heldout} +│ 1\.000 +│", output), output[-3000:]
    assert len(list((tmp_path / "rollout-toy" / "ledger" / "groups").glob("*.parquet"))) == heldout
