"""The agent cannot get the reward without the work: task material and the server are out of reach.

The env server holds the task suites (verifier scripts and answers, held-out tasks too) and
computes the reward in its memory. The agent's commands run under a uid of their own:
they cannot read the suites' files, nor the server's /proc files or memory; a local
sandbox's filesystem holds nothing of the host's but system directories (no homes, no run
ledgers, no host sockets).
"""

from __future__ import annotations

import asyncio
import os
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from envs.builtin.probe import agent_report, verifier_report
from envs.builtin.terminal.env import WORKDIR_ENV_VAR
from providers.contract import Sandbox, SandboxSpec
from providers.probe import _verifier_out_of_reach
from tests.security.agent import SERVER_PIDS, run_as_agent

STEAL = (
    f"echo uid=$(id -u); for pid in $({SERVER_PIDS}); do echo server=$pid;"
    " cat /proc/$pid/environ > /dev/null && echo READ-ENVIRON;"
    " (exec 3< /proc/$pid/mem) && echo OPENED-MEM;"
    " ls /proc/$pid/fd > /dev/null && echo LISTED-FDS; done; cat {tasks} > /dev/null && echo READ-TASKS"
)


async def _steal(sandbox: Sandbox, tasks: str) -> str:
    return await run_as_agent(sandbox, STEAL.replace("{tasks}", tasks) + " 2>&1")


def _assert_nothing_stolen(out: str) -> None:
    assert "server=" in out, out  # the server is there to be attacked
    for loot in ("READ-ENVIRON", "OPENED-MEM", "LISTED-FDS", "READ-TASKS"):
        assert loot not in out, out
    assert out.count("Permission denied") >= 4, out


@pytest.mark.root
async def test_a_local_agent_reads_neither_task_material_nor_the_server(local_provider: Any) -> None:
    sandbox = await local_provider.create(SandboxSpec(env="terminal"))
    await local_provider.wait_ready(sandbox)
    tasks = str(resources.files("envs.builtin.terminal").joinpath("tasks.yaml"))  # the server imports from this path
    _assert_nothing_stolen(await _steal(sandbox, tasks))


@pytest.mark.docker
async def test_a_docker_agent_reads_neither_task_material_nor_the_server(docker_provider: Any) -> None:
    sandbox = await docker_provider.create(SandboxSpec(env="terminal"))
    await docker_provider.wait_ready(sandbox, timeout_s=60)
    tasks = "/opt/hillclimb/lib/python3.11/site-packages/envs/builtin/terminal/tasks.yaml"
    _assert_nothing_stolen(await _steal(sandbox, tasks))


@pytest.mark.root
async def test_a_local_sandbox_sees_none_of_the_hosts_tree(local_provider: Any, tmp_path: Path) -> None:
    host_dir = tmp_path / "host"
    host_dir.mkdir(mode=0o755)
    tmp_path.chmod(0o755)
    host_socket = host_dir / "host.sock"
    connections = 0

    def count(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        w.close()

    listener = await asyncio.start_unix_server(count, str(host_socket))
    host_socket.chmod(0o777)  # anyone on the host may connect: a sandbox must not even see it
    sandbox = await local_provider.create(SandboxSpec(env="terminal"))
    await local_provider.wait_ready(sandbox)
    try:
        out = await run_as_agent(
            sandbox,
            f"ls -d {host_socket} {local_provider.root} /home /var/lib /run/docker.sock 2>&1;"
            f" bash -c 'exec 3<>/dev/tcp/127.0.0.1/1' 2>&1; ls / | tr '\\n' ' '",
        )
    finally:
        listener.close()
        await listener.wait_closed()
    for path in (host_socket, local_provider.root, "/home", "/var/lib", "/run/docker.sock"):
        assert f"cannot access '{path}': No such file or directory" in out, out
    assert connections == 0
    top = set(out.strip().splitlines()[-1].split())
    assert {"usr", "etc", "proc", "tmp", "sandbox", "run"} <= top and "home" not in top and "var" in top, top


async def test_where_every_role_shares_the_servers_uid_the_probe_says_the_verifier_is_in_reach(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outside any sandbox (a warden of our own, under our uid), as in an ordinary user's local
    sandbox: leftovers are still swept, but the verifier runs under the agent's uid, dumpable."""
    monkeypatch.setenv(WORKDIR_ENV_VAR, str(tmp_path))
    report = {"uid": os.getuid(), "agent": await agent_report(None), "verifier": await verifier_report()}
    assert report["agent"]["survivors"] == 0  # the chain and the daemon were the warden's orphans
    check = _verifier_out_of_reach(report["uid"], report["agent"], report["verifier"])
    assert not check.ok
    assert "the agent's or the server's" in check.detail and "can open its memory" in check.detail
    assert "script is left" not in check.detail  # it still removes itself
