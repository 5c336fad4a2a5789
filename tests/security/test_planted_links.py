"""Links planted where the orchestrator looks: the host must not follow them.

Two layers. The agent (arbitrary commands through the `terminal` environment) cannot
write its sandbox's socket directory at all: it belongs to the server's uid. And should
that uid plant links anyway (a compromised server, or an ordinary user's sandbox where
the agent shares the server's uid), swapping `env.sock` for a symlink to a host socket
must not send the orchestrator's health check or WebSocket upgrade, bearer token
included, to that socket, and swapping the server log for a symlink to a host file must
not make the provider read that file back.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from envs.client.http_client import http_request
from envs.client.unix_socket import UnsafeSocketError, _checked_socket
from providers.contract import Sandbox, SandboxSpec
from tests.security.agent import run_as_agent


class HostListener:
    """A Unix socket on the host that records every byte anyone sends it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.received = bytearray()
        self.connections = 0
        self._server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> HostListener:
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        self.path.chmod(0o777)  # as careless a socket as a host may have
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.received += await reader.read(65536)
        writer.close()


def _as_owner_of(path: Path, action: Callable[[], None]) -> bool:
    """Do `action` in a child running as the uid that owns `path` (the sandbox's server); did it work?"""
    owner = path.stat()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setresgid(owner.st_gid, owner.st_gid, owner.st_gid)
            os.setresuid(owner.st_uid, owner.st_uid, owner.st_uid)
            action()
            code = 0
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


def _swap_for_link(path: Path, target: Path) -> Callable[[], None]:
    def swap() -> None:
        path.unlink(missing_ok=True)
        path.symlink_to(target)

    return swap


async def _socket_swap_is_refused(sandbox: Sandbox, tmp_path: Path) -> None:
    socket_path = Path(urlsplit(sandbox.endpoint).path)
    async with HostListener(tmp_path / "host.sock") as host:
        tried = await run_as_agent(sandbox, f"cd /run/hillclimb && rm env.sock && ln -s {host.path} env.sock")
        assert "Permission denied" in tried  # the agent cannot even enter the socket dir
        assert (await http_request(sandbox.endpoint, "/health", token=sandbox.secret()))[0] == 200
        assert _as_owner_of(socket_path, _swap_for_link(socket_path, host.path))  # as the server's uid could
        assert socket_path.is_symlink()
        with pytest.raises(UnsafeSocketError, match="symbolic link"):
            await http_request(sandbox.endpoint, "/health", token=sandbox.secret())
        with pytest.raises(UnsafeSocketError, match="symbolic link"):
            await sandbox.handle.client(connect_timeout_s=2).connect()
        await asyncio.sleep(0.05)
    assert host.connections == 0 and not host.received


def _socket_dir(sandbox: Sandbox) -> str:
    return str(Path(urlsplit(sandbox.endpoint).path).parent)


@pytest.mark.root
async def test_local_socket_swapped_for_a_host_socket_link_is_refused(local_provider: Any, tmp_path: Path) -> None:
    sandbox = await local_provider.create(SandboxSpec(env="terminal"))
    await local_provider.wait_ready(sandbox)
    await _socket_swap_is_refused(sandbox, tmp_path)


@pytest.mark.docker
async def test_docker_socket_swapped_for_a_host_socket_link_is_refused(docker_provider: Any, tmp_path: Path) -> None:
    sandbox = await docker_provider.create(SandboxSpec(env="terminal"))
    await docker_provider.wait_ready(sandbox, timeout_s=60)
    await _socket_swap_is_refused(sandbox, tmp_path)


@pytest.mark.root
async def test_local_server_log_swapped_for_a_host_file_link_is_not_read(local_provider: Any, tmp_path: Path) -> None:
    secret = tmp_path / "host-secret"
    secret.write_text("HOST-SECRET-7f3a\n")
    secret.chmod(0o600)
    sandbox = await local_provider.create(SandboxSpec(env="terminal"))
    await local_provider.wait_ready(sandbox)
    run_dir = Path(_socket_dir(sandbox))
    home = run_dir.parent
    # The host's paths do not exist inside; the sandbox's own socket dir is the server's alone.
    tried = await run_as_agent(
        sandbox, f"for d in {home} /run/hillclimb; do rm -f $d/server.log; ln -s {secret} $d/server.log; done"
    )
    assert "No such file or directory" in tried and "Permission denied" in tried
    # Every place a log could be, as the server's uid: the socket dir (writable), the home (it is not).
    assert _as_owner_of(run_dir, _swap_for_link(run_dir / "server.log", secret))
    assert not _as_owner_of(run_dir, _swap_for_link(home / "server.log", secret))
    assert (run_dir / "server.log").is_symlink() and not (home / "server.log").is_symlink()
    assert "HOST-SECRET" not in await local_provider.log_tail(sandbox.id)


def test_hard_links_and_other_files_are_refused(tmp_path: Path) -> None:
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tmp_path / "real.sock"))
    target, fd = _checked_socket(str(tmp_path / "real.sock"))
    assert target == f"/proc/self/fd/{fd}"
    os.close(fd)  # type: ignore[arg-type]
    os.link(tmp_path / "real.sock", tmp_path / "linked.sock")
    with pytest.raises(UnsafeSocketError, match="hard link"):
        _checked_socket(str(tmp_path / "linked.sock"))
    (tmp_path / "plain").write_text("")
    with pytest.raises(UnsafeSocketError, match="not a socket"):
        _checked_socket(str(tmp_path / "plain"))
    listener.close()


@pytest.mark.root
def test_a_socket_owned_by_a_stranger_is_refused(tmp_path: Path) -> None:
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tmp_path / "theirs.sock"))
    os.chown(tmp_path / "theirs.sock", 4242, 4242)  # neither us (root) nor the directory's owner
    with pytest.raises(UnsafeSocketError, match="owned by uid 4242"):
        _checked_socket(str(tmp_path / "theirs.sock"))
    listener.close()
