"""The warden runs the server's commands, cleans up after them, and survives nonsense.

Driven here as a server outside any sandbox drives it: a child process under our own uid,
over a real SOCK_SEQPACKET socketpair with descriptors passed alongside.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from envs.sandbox.agent_commands import CommandExit, WardenClient, WardenGoneError, _connect_warden, _start_warden
from envs.sandbox.agent_processes import keep_memory_private
from envs.sandbox.warden import Identity, Warden, accept_server

ENV = {"PATH": "/usr/bin:/bin"}


@pytest.fixture
async def commands() -> AsyncIterator[WardenClient]:
    sock, process = _start_warden()
    sock.setblocking(False)
    agent = WardenClient(sock, process)
    yield agent
    agent.close()
    assert process.wait(5) == 0  # our end closed: it exits by itself


async def _run(commands: WardenClient, shell: str, timeout_s: float | None = 10) -> tuple[int, bool, str]:
    read_fd, write_fd = os.pipe()
    try:
        done = await commands.run(["sh", "-c", shell], cwd="/", env=ENV, out_fd=write_fd, timeout_s=timeout_s)
    finally:
        os.close(write_fd)
    with os.fdopen(read_fd, "rb") as out:
        return done.exit_code, done.timed_out, out.read().decode()


async def test_runs_commands_with_their_status_and_output(commands: WardenClient) -> None:
    assert await _run(commands, "echo out; echo err >&2; exit 3") == (3, False, "out\nerr\n")
    assert (await _run(commands, "kill -9 $$"))[0] == 137  # 128 + SIGKILL, as a shell says
    assert (await _run(commands, "yes | head -c 3"))[2] == "y\ny"  # SIGPIPE is default again


def _running(pid: int) -> bool:
    """Whether `pid` still runs: a zombie is dead, only not yet reaped."""
    try:
        return "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
    except (FileNotFoundError, ProcessLookupError):
        return False


async def test_a_timeout_kills_the_whole_group_and_any_escapee(commands: WardenClient, tmp_path: Path) -> None:
    pid_file = tmp_path / "escapee"
    # The escapee writes its pid whole (by a rename) and the command waits for it: the kill at the
    # timeout must find it started, however late a loaded host forks it.
    escape = f"setsid -f sh -c 'echo $$ > {pid_file}.tmp && mv {pid_file}.tmp {pid_file}; exec sleep 60'"
    started = time.monotonic()
    code, timed_out, _ = await _run(commands, f"{escape}; while [ ! -s {pid_file} ]; do sleep 0.01; done; sleep 60", 3)
    assert timed_out and time.monotonic() - started < 30  # killed at the timeout, not after the 60 s sleep
    escapee = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while _running(escapee):
        if time.monotonic() > deadline:
            pytest.fail(f"process {escapee} outlived its command")
        await asyncio.sleep(0.02)


async def test_cancelling_a_call_kills_its_command(commands: WardenClient, tmp_path: Path) -> None:
    marker = tmp_path / "pid"
    command = f"echo $$ > {marker}.tmp && mv {marker}.tmp {marker}; exec sleep 60"
    task = asyncio.create_task(_run(commands, command, None))
    deadline = time.monotonic() + 30
    while not marker.exists():  # written whole, by a rename
        if time.monotonic() > deadline:
            pytest.fail("the command never started")
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    pid = int(marker.read_text())
    deadline = time.monotonic() + 30
    while os.path.exists(f"/proc/{pid}"):
        if time.monotonic() > deadline:
            pytest.fail(f"process {pid} outlived its cancelled command")
        await asyncio.sleep(0.01)


def _processes(marker: str) -> list[int]:
    """Pids of the processes whose command line holds `marker`."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if marker.encode() in Path(entry.path, "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _chain(path: Path, depth: int) -> str:
    """Shell: a chain of `depth` + 1 processes, each the parent of the next, in a session of its
    own, each a `sleep` named after `path`."""
    path.write_text(f'd=$1; if [ "$d" -gt 0 ]; then bash "$0" $((d-1)) & fi; exec -a {path} sleep 600\n')
    return f"setsid bash {path} {depth} >/dev/null 2>&1 </dev/null & sleep 1"


async def test_a_chain_deeper_than_a_sweep_dies_with_its_command(commands: WardenClient, tmp_path: Path) -> None:
    script = tmp_path / "chain-under-our-uid.sh"
    await _run(commands, f"{_chain(script, 100)}; while [ $(ps -e -o args= | grep -c ^{script}) -lt 101 ]; do :; done")
    assert _processes(str(script)) == []  # the reply comes once they are gone


async def test_a_runs_stderr_may_go_apart(commands: WardenClient) -> None:
    (out_r, out_w), (err_r, err_w) = os.pipe(), os.pipe()
    done = await commands.run(
        ["sh", "-c", "echo out; echo err >&2"], cwd="/", env=ENV, out_fd=out_w, stderr_fd=err_w, timeout_s=10
    )
    os.close(out_w)
    os.close(err_w)
    with os.fdopen(out_r, "rb") as out, os.fdopen(err_r, "rb") as err:
        assert (done.exit_code, out.read(), err.read()) == (0, b"out\n", b"err\n")


async def test_a_cleanup_started_without_waiting_runs_before_the_next_command(
    commands: WardenClient, tmp_path: Path
) -> None:
    marker = tmp_path / "cleaned"
    commands.detach(["sh", "-c", f"sleep 0.5; touch {marker}"], cwd="/", env=ENV)
    assert (await _run(commands, f"test -e {marker} && echo after"))[2] == "after\n"


async def test_end_kills_a_roles_running_commands_and_what_they_left(commands: WardenClient, tmp_path: Path) -> None:
    script = tmp_path / "chain-to-end.sh"
    running = asyncio.create_task(_run(commands, f"{_chain(script, 5)}; exec sleep 60", None))
    while len(_processes(str(script))) < 6:
        await asyncio.sleep(0.02)
    await commands.end("agent")
    assert _processes(str(script)) == []
    assert (await running)[0] == 137  # killed, and told so


async def test_a_hold_keeps_other_tasks_commands_waiting(commands: WardenClient, tmp_path: Path) -> None:
    marker, held = tmp_path / "ran", asyncio.Event()

    async def another_session() -> tuple[int, bool, str]:  # a task of its own, as another session's is
        await held.wait()
        return await _run(commands, f"touch {marker}")

    other = asyncio.create_task(another_session())
    async with commands.hold():
        held.set()
        await asyncio.sleep(0.3)
        assert not marker.exists() and not other.done()
        assert (await _run(commands, "echo mine"))[2] == "mine\n"  # the holder's own commands run
    assert (await other)[0] == 0 and marker.exists()


async def test_a_hold_waits_for_the_commands_already_running(commands: WardenClient, tmp_path: Path) -> None:
    marker = tmp_path / "started"
    running = asyncio.create_task(_run(commands, f"touch {marker}; sleep 0.5; echo finished"))
    while not marker.exists():
        await asyncio.sleep(0.01)
    async with commands.hold():
        assert running.done()  # not killed, waited for
    assert await running == (0, False, "finished\n")


async def test_nonsense_gets_a_reason_and_the_warden_lives_on(commands: WardenClient) -> None:
    loop = asyncio.get_running_loop()
    for request in (b"not json", b"[1, 2]", json.dumps({"op": "format-disk", "id": 7}).encode()):
        await loop.sock_sendall(commands.sock, request)
        reply = json.loads(await loop.sock_recv(commands.sock, 65536))
        assert reply["error"], reply
    no_output = {"op": "run", "id": 8, "argv": ["true"], "cwd": "/", "env": {}}
    await loop.sock_sendall(commands.sock, json.dumps(no_output).encode())
    assert "output descriptor" in json.loads(await loop.sock_recv(commands.sock, 65536))["error"]
    assert await _run(commands, "echo still here") == (0, False, "still here\n")


async def test_a_missing_work_dir_is_reported_as_a_shell_would(commands: WardenClient, tmp_path: Path) -> None:
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
    commands = WardenClient(sock, process)
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


# -- a warden apart from its server (a pod's second container) ---------------------------------

AGENT, SERVER, STRANGER = 61001, 61002, 61003


def _as(uid: int, work: Callable[[], int]) -> int:
    """Run `work` in a child process under `uid` (no exec: this interpreter's files are root's
    alone); its return value is the child's exit status."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            Identity(uid, uid).assume()
            code = work()
        finally:
            os._exit(code)
    return pid


def _wait(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def _until_exists(path: str) -> None:
    deadline = time.monotonic() + 10
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


@pytest.mark.root
def test_a_warden_apart_takes_only_the_server_and_runs_commands_as_the_agent() -> None:
    directory = tempfile.mkdtemp(prefix="hc-warden-")  # a pod's shared emptyDir: both uids write it
    os.chmod(directory, 0o777)
    path = os.path.join(directory, "warden.sock")

    def warden_apart() -> int:
        keep_memory_private()
        return Warden(accept_server(path, SERVER), identities=None, apart=True).serve()

    def stranger() -> int:  # connects first: the warden must not take it
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
            sock.connect(path)
            sock.settimeout(5)
            return 0 if sock.recv(16) == b"" else 1  # closed unanswered

    def server() -> int:
        commands = WardenClient(_connect_warden(path, AGENT))
        read_fd, write_fd = os.pipe()

        async def id_u() -> CommandExit:
            return await commands.run(["sh", "-c", "id -u"], cwd="/", env=ENV, out_fd=write_fd, timeout_s=10)

        done = asyncio.run(id_u())
        os.close(write_fd)
        ran_as = os.read(read_fd, 64).decode().strip()
        commands.close()
        gone = not os.path.exists(path)  # removed once the server was in: nothing else can connect
        return 0 if (done.exit_code, ran_as, gone) == (0, str(AGENT), True) else 1

    try:
        warden = _as(AGENT, warden_apart)
        _until_exists(path)
        assert _wait(_as(STRANGER, stranger)) == 0
        assert _wait(_as(SERVER, server)) == 0
        assert _wait(warden) == 0  # the server's end closed: the warden is done
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.root
def test_a_server_refuses_a_warden_socket_served_by_another_uid() -> None:
    directory = tempfile.mkdtemp(prefix="hc-warden-")
    os.chmod(directory, 0o777)
    path = os.path.join(directory, "warden.sock")

    def impostor() -> int:  # listens where the warden should, under a uid not the agent's
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as listener:
            listener.bind(path)
            os.chmod(path, 0o777)
            listener.listen(1)
            listener.accept()[0].close()
        return 0

    def server() -> int:
        try:
            _connect_warden(path, AGENT)
        except WardenGoneError as e:
            return 0 if f"served by uid {STRANGER}, not the role's {AGENT}" in str(e) else 1
        return 1

    try:
        impostor_pid = _as(STRANGER, impostor)
        _until_exists(path)
        assert _wait(_as(SERVER, server)) == 0
        _wait(impostor_pid)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
