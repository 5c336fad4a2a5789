"""The warden runs the server's commands, cleans up after them, and survives nonsense.

Driven here as a server outside any sandbox drives it: a child process under our own uid,
over a real SOCK_SEQPACKET socketpair with descriptors passed alongside.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from envs.agent_commands import AgentCommands, WardenGoneError, _start_warden
from envs.warden import Identity

ENV = {"PATH": "/usr/bin:/bin"}


@pytest.fixture
async def commands() -> AsyncIterator[AgentCommands]:
    sock, process = _start_warden()
    sock.setblocking(False)
    agent = AgentCommands(sock, os.getuid(), process)
    yield agent
    agent.close()
    assert process.wait(5) == 0  # our end closed: it exits by itself


async def _run(commands: AgentCommands, shell: str, timeout_s: float | None = 10) -> tuple[int, bool, str]:
    read_fd, write_fd = os.pipe()
    try:
        done = await commands.run(["sh", "-c", shell], cwd="/", env=ENV, out_fd=write_fd, timeout_s=timeout_s)
    finally:
        os.close(write_fd)
    with os.fdopen(read_fd, "rb") as out:
        return done.exit_code, done.timed_out, out.read().decode()


async def test_runs_commands_with_their_status_and_output(commands: AgentCommands) -> None:
    assert await _run(commands, "echo out; echo err >&2; exit 3") == (3, False, "out\nerr\n")
    assert (await _run(commands, "kill -9 $$"))[0] == 137  # 128 + SIGKILL, as a shell says
    assert (await _run(commands, "yes | head -c 3"))[2] == "y\ny"  # SIGPIPE is default again


async def test_a_timeout_kills_the_whole_group_and_any_escapee(commands: AgentCommands, tmp_path: Path) -> None:
    pid_file = tmp_path / "escapee"
    started = time.monotonic()
    code, timed_out, _ = await _run(commands, f"setsid -f sh -c 'echo $$ > {pid_file}; exec sleep 60'; sleep 60", 0.5)
    assert timed_out and time.monotonic() - started < 5
    escapee = int(pid_file.read_text())
    for _ in range(100):
        if not os.path.exists(f"/proc/{escapee}") or "Z" in Path(f"/proc/{escapee}/stat").read_text().split()[2]:
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail(f"process {escapee} outlived its command")


async def test_cancelling_a_call_kills_its_command(commands: AgentCommands, tmp_path: Path) -> None:
    marker = tmp_path / "pid"
    task = asyncio.create_task(_run(commands, f"echo $$ > {marker}; exec sleep 60", None))
    for _ in range(200):
        if marker.exists() and marker.read_text().strip():
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    pid = int(marker.read_text())
    for _ in range(200):
        if not os.path.exists(f"/proc/{pid}"):
            break
        await asyncio.sleep(0.01)
    assert not os.path.exists(f"/proc/{pid}")


async def test_nonsense_gets_a_reason_and_the_warden_lives_on(commands: AgentCommands) -> None:
    loop = asyncio.get_running_loop()
    for request in (b"not json", b"[1, 2]", json.dumps({"op": "format-disk", "id": 7}).encode()):
        await loop.sock_sendall(commands.sock, request)
        reply = json.loads(await loop.sock_recv(commands.sock, 65536))
        assert reply["error"], reply
    no_output = {"op": "run", "id": 8, "argv": ["true"], "cwd": "/", "env": {}}
    await loop.sock_sendall(commands.sock, json.dumps(no_output).encode())
    assert "output descriptor" in json.loads(await loop.sock_recv(commands.sock, 65536))["error"]
    assert await _run(commands, "echo still here") == (0, False, "still here\n")


async def test_a_missing_work_dir_is_reported_as_a_shell_would(commands: AgentCommands, tmp_path: Path) -> None:
    read_fd, write_fd = os.pipe()
    gone = tmp_path / "gone"
    done = await commands.run(["bash", "-c", "true"], cwd=str(gone), env=ENV, out_fd=write_fd, timeout_s=5)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as out:
        assert out.read().decode().startswith(f"bash: cannot start in {gone}: No such file")
    assert done.exit_code == 126


async def test_a_warden_that_is_gone_is_a_typed_error() -> None:
    sock, process = _start_warden()
    sock.setblocking(False)
    commands = AgentCommands(sock, os.getuid(), process)
    process.kill()
    process.wait()
    with pytest.raises(WardenGoneError):
        await _run(commands, "true")
    commands.close()


def test_identities_parse_as_on_the_command_line() -> None:
    assert Identity.parse("10001:10001:10001") == Identity(10001, 10001, (10001,))
    assert Identity.parse("5:6") == Identity(5, 6)
    for bad in ("10001", "a:b", "1:2:3:4"):
        with pytest.raises(ValueError, match="UID:GID"):
            Identity.parse(bad)


def test_a_socket_pair_is_what_the_warden_speaks() -> None:
    sock, process = _start_warden()
    assert sock.type == socket.SOCK_SEQPACKET
    sock.close()
    assert process.wait(5) == 0
