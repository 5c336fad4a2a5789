"""The cluster path: `ray job submit ... -- python -m orchestrator rollout CONFIG` against a
head node started with `ray start --head` on this machine (loopback only)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from envs.toy_terminal.tasks import SUITE

pytestmark = [
    pytest.mark.ray,
    pytest.mark.slow,
    pytest.mark.root,
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
    # Its own temp dir (short: Ray's Unix sockets live there) and its own session, so that the
    # teardown stops this head and what it started, never another Ray on the machine.
    temp_dir = tempfile.mkdtemp(prefix="hc-ray-", dir="/tmp")
    start = [
        f"{bin_dir}/ray",
        "start",
        "--head",
        "--block",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
        "--num-cpus=2",
        "--node-ip-address=127.0.0.1",
        f"--port={_free_port()}",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}",
        # Ports of its own for the per-node agents too: the defaults would collide with another
        # Ray on this machine, and the head would never get an agent to run jobs on.
        *(
            f"--{flag}={_free_port()}"
            for flag in (
                "dashboard-agent-listen-port",
                "dashboard-agent-grpc-port",
                "metrics-export-port",
                "runtime-env-agent-port",
                "ray-client-server-port",
            )
        ),
    ]
    log = open(Path(temp_dir) / "ray-start.log", "wb")  # noqa: SIM115 - closed in the teardown
    head = subprocess.Popen(start, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for_dashboard(f"http://127.0.0.1:{dashboard}", head, Path(temp_dir) / "ray-start.log")
        yield f"http://127.0.0.1:{dashboard}", env
    finally:
        _stop_session(head)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_for_dashboard(address: str, head: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if head.poll() is not None:
            raise RuntimeError(f"ray start exited with {head.returncode}: {log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(f"{address}/api/version", timeout=2).close()
            return
        except urllib.error.HTTPError:  # it answers (401 without the cluster's token): it is up
            return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the head's dashboard did not come up within 120 s: {log.read_text()[-3000:]}")


def _stop_session(head: subprocess.Popen[bytes]) -> None:
    """SIGTERM asks `ray start --block` to shut down what it started; what is still there
    after a grace period is killed with its whole session. (`ray stop` would stop every Ray
    on the machine, not just this one.)"""
    head.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        head.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(head.pid, signal.SIGKILL)
    head.wait()


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
