"""The cluster path: `ray job submit ... -- python -m orchestrator rollout CONFIG` against a
head node started with `ray start --head` on this machine (loopback only)."""

from __future__ import annotations

import contextlib
import json
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

from envs.builtin.toy_terminal.tasks import SUITE

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


def _start_node(args: list[str], env: dict[str, str], temp_dir: str, name: str) -> subprocess.Popen[bytes]:
    """`ray start --block` with ports of its own for the per-node agents (the defaults would
    collide with another Ray node on this machine, and the node would never get an agent), in
    a session of its own: the teardown stops this node and what it started, nothing else."""
    own_ports = (
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "metrics-export-port",
        "runtime-env-agent-port",
        "node-manager-port",
        "object-manager-port",
    )
    command = [
        str(Path(sys.executable).parent / "ray"),
        "start",
        "--block",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
        "--node-ip-address=127.0.0.1",
        *args,
        *(f"--{flag}={_free_port()}" for flag in own_ports),
    ]
    log = Path(temp_dir) / f"{name}.log"
    with open(log, "wb") as out:  # the child holds its own descriptor
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.fixture
def head_node() -> Iterator[tuple[str, dict[str, str], str, str]]:
    """A head node on loopback: yields its dashboard (jobs) address, the environment for the
    `ray` CLI, its GCS address (for other nodes to join) and its temp dir."""
    bin_dir = str(Path(sys.executable).parent)
    # The job's `python` must be this environment's; Ray 2.5x enables token auth by default.
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    dashboard, gcs = _free_port(), _free_port()
    temp_dir = tempfile.mkdtemp(prefix="hc-ray-", dir="/tmp")  # short: Ray's Unix sockets live there
    head = _start_node(
        [
            "--head",
            "--num-cpus=2",
            f"--port={gcs}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            f"--ray-client-server-port={_free_port()}",
        ],
        env,
        temp_dir,
        "head",
    )
    try:
        _wait_for_dashboard(f"http://127.0.0.1:{dashboard}", head, Path(temp_dir) / "head.log")
        yield f"http://127.0.0.1:{dashboard}", env, f"127.0.0.1:{gcs}", temp_dir
    finally:
        _stop_session(head)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def learner_node(head_node: tuple[str, dict[str, str], str, str]) -> Iterator[None]:
    """A second node joined to the head, the only one offering the custom resource `learner_node`."""
    _, env, gcs, _ = head_node
    # A temp dir of its own, as another host has: nodes sharing one would share the job's unpacked
    # working directory, and one node's cleanup would pull it from under the other's workers.
    temp_dir = tempfile.mkdtemp(prefix="hc-ray-", dir="/tmp")
    node = _start_node([f"--address={gcs}", "--num-cpus=2", '--resources={"learner_node": 1}'], env, temp_dir, "node")
    try:
        yield
    finally:
        _stop_session(node)
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


def _submit(address: str, command: str, config: str, settings: list[str]) -> list[str]:
    """`ray job submit` of `python -m orchestrator COMMAND CONFIG --set ...`, this checkout as the
    job's working directory."""
    ray = str(Path(sys.executable).parent / "ray")
    sets = [arg for setting in settings for arg in ("--set", setting)]
    return [ray, "job", "submit", "--address", address, "--working-dir", str(REPO), "--"] + [
        "python",
        "-m",
        "orchestrator",
        command,
        config,
        *sets,
    ]


def test_ray_job_submit_runs_a_rollout_on_the_cluster(
    head_node: tuple[str, dict[str, str], str, str], tmp_path: Path
) -> None:
    address, env, _, _ = head_node
    settings = [f"run.dir={tmp_path}", "rollout.group_size=1", "eval.k=[1]", "env.eval_splits=[heldout]"]
    result = _submit_when_agent_is_up(_submit(address, "rollout", "configs/rollout_toy.yaml", settings), env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "succeeded" in output and "Connecting to existing Ray cluster" in output
    heldout = len(SUITE.tasks("heldout"))
    assert re.search(rf"│ heldout │ {heldout} +│ {heldout} +│ 1\.000 +│", output), output[-3000:]
    assert len(list((tmp_path / "rollout-toy" / "ledger" / "groups").glob("*.parquet"))) == heldout


def test_ray_job_submit_trains_across_two_nodes(
    head_node: tuple[str, dict[str, str], str, str], learner_node: None, tmp_path: Path
) -> None:
    """The main job, shortened, submitted to a two-node cluster: the learner can only go to the
    node with the learner role, so the run completes only if placement, the rendezvous, weight
    sync from that node and the checkpoints all work across nodes."""
    address, env, _, _ = head_node
    settings = [
        f"run.dir={tmp_path}",
        "train.steps=2",
        "train.warmup_steps=1",
        "train.eval_every=2",
        "train.eval_tasks=4",
        "train.groups_per_step=2",
        "train.checkpoint_every=2",
        "learner.resources_per_learner.learner_node=1",
    ]
    result = _submit_when_agent_is_up(_submit(address, "train", "configs/echo_toy.yaml", settings), env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "succeeded" in output and "learners: rank 0 on node" in output
    run = tmp_path / "echo-toy"
    assert json.loads((run / "summary.json").read_text())["rl_steps"] == 2
    assert (run / "checkpoints" / "step-000002" / "state" / ".metadata").exists()
