"""Clients that try to exhaust an env server, before and after authenticating.

Each attack runs against a real `python -m envs` process; its memory is read from
/proc, and a well-behaved client must still be served during and after the attack.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from envs.client.http_client import http_request
from envs.client.ws_client import EnvClient
from envs.wire import websocket as ws

REPO = Path(__file__).resolve().parents[2]
TOKEN = "exhaustion-test-token-5b1e"
MIB = 1024 * 1024


class ServerProcess:
    def __init__(self, proc: subprocess.Popen[bytes], port: int) -> None:
        self.proc, self.port = proc, port
        self.url = f"ws://127.0.0.1:{port}/ws"

    def rss_mib(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]

    async def healthy(self) -> bool:
        status, _ = await http_request(self.url, "/health", timeout=5.0)
        return status == 200


@pytest.fixture
def server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    args: list[str] = getattr(request, "param", [])
    nofile = 64 if "--few-files" in args else None
    args = [a for a in args if a != "--few-files"]

    def limit_files() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    proc = subprocess.Popen(
        [sys.executable, "-m", "envs", "toy_terminal", "--port", "0", *args],
        cwd=REPO,
        env={**os.environ, "HILLCLIMB_ENV_TOKEN": TOKEN},
        stderr=subprocess.PIPE,
        preexec_fn=limit_files,
    )
    assert proc.stderr is not None
    port = None
    for line in proc.stderr:
        if found := re.search(rb"ws://127\.0\.0\.1:(\d+)/ws", line):
            port = int(found.group(1))
            break
    assert port is not None, "the server did not say where it listens"
    yield ServerProcess(proc, port)
    proc.kill()
    proc.wait()
    proc.stderr.close()


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(5.0)
    return sock


def _upgraded(port: int) -> socket.socket:
    """A raw socket with an authenticated WebSocket session open on it."""
    sock = _connect(port)
    sock.sendall(
        f"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {ws.new_client_key()}\r\nSec-WebSocket-Version: 13\r\n"
        f"Authorization: Bearer {TOKEN}\r\n\r\n".encode()
    )
    assert sock.recv(4096).startswith(b"HTTP/1.1 101 ")
    return sock


async def _flood(sock: socket.socket, unit: bytes, limit: int, seconds: float = 10.0) -> int:
    """Send `unit` over and over, never reading, for `seconds` or until `limit` bytes are out;
    returns how many were sent. A server that stops reading makes the sends block."""
    sock.setblocking(False)
    stream = memoryview(unit * 2)
    sent, offset, deadline = 0, 0, time.monotonic() + seconds
    while sent < limit and time.monotonic() < deadline:
        try:
            n = sock.send(stream[offset : offset + len(unit)])
        except BlockingIOError:
            await asyncio.sleep(0.01)
            continue
        sent, offset = sent + n, (offset + n) % len(unit)  # whole units, whatever each send took
    await asyncio.sleep(0.5)
    return sent


async def test_a_body_is_not_read_before_the_token_is_checked(server: ServerProcess) -> None:
    before = server.rss_mib()
    attackers = []
    for _ in range(20):
        sock = _connect(server.port)
        sock.sendall(b"POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Length: 8000000\r\n\r\n" + b"x" * (7 * MIB))
        attackers.append(sock)
    for sock in attackers:
        reply = sock.recv(4096)
        assert reply.startswith(b"HTTP/1.1 401 "), reply[:80]  # answered without waiting for the body
    grown = server.rss_mib() - before
    for sock in attackers:
        sock.close()
    assert grown < 20, f"RSS grew {grown:.0f} MiB for 140 MiB of unauthenticated bodies"
    assert await server.healthy()


@pytest.mark.parametrize("server", [["--claim-token"]], indirect=True)
async def test_a_claim_flood_is_refused_unread_and_holds_no_memory(server: ServerProcess) -> None:
    before = server.rss_mib()
    attackers = []
    for _ in range(20):  # what grew an unclaimed server from 39 to 180 MiB, for good
        sock = _connect(server.port)
        sock.sendall(b"POST /claim HTTP/1.1\r\nHost: x\r\nContent-Length: 8388600\r\n\r\n")
        with contextlib.suppress(OSError):  # refused as soon as the head is read: the rest may not go out
            sock.sendall(b"x" * (7 * MIB))
        attackers.append(sock)
    for sock in attackers:
        assert sock.recv(4096).startswith(b"HTTP/1.1 413 ")
    during = server.rss_mib() - before
    for sock in attackers:
        sock.close()
    await asyncio.sleep(0.5)
    after = server.rss_mib() - before
    assert during < 5 and after < 5, f"RSS grew {during:.1f} MiB under the flood, {after:.1f} MiB after"
    status, _ = await http_request(server.url, "/claim", method="POST", token="the-claimant")
    assert status == 200  # a claim with no body still works


async def test_pipelined_requests_from_a_client_that_never_reads_are_not_buffered(server: ServerProcess) -> None:
    before = server.rss_mib()
    sock = _connect(server.port)
    sent = await _flood(sock, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" * 1024, 18 * MIB)
    grown = server.rss_mib() - before
    assert sent < 18 * MIB, "the server kept reading requests whose replies nobody read"
    assert grown < 20, f"RSS grew {grown:.0f} MiB"
    assert await server.healthy()
    sock.close()


async def test_a_ping_flood_that_never_reads_pongs_is_not_buffered(server: ServerProcess) -> None:
    sock = _upgraded(server.port)
    before = server.rss_mib()
    sent = await _flood(sock, ws.encode_frame(ws.OP_PING, b"p" * 125, mask=True) * 512, 32 * MIB)
    grown = server.rss_mib() - before
    assert sent < 32 * MIB and grown < 20, f"sent {sent / MIB:.0f} MiB of pings; RSS grew {grown:.0f} MiB"
    sock.close()


@pytest.mark.parametrize("server", [["--header-timeout", "0.5"]], indirect=True)
async def test_a_connection_that_never_finishes_its_request_is_closed(server: ServerProcess) -> None:
    sock = _connect(server.port)
    sock.settimeout(30)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
    started = time.monotonic()
    assert sock.recv(4096) == b""  # closed by the server
    assert time.monotonic() - started < 8  # below the default 10 s: the 0.5 s flag was honoured
    sock.close()


@pytest.mark.parametrize("server", [["--few-files"]], indirect=True)
async def test_slowloris_connections_cannot_lock_out_a_real_client(server: ServerProcess) -> None:
    slow = []
    for _ in range(100):  # more than the 64 files the server may open
        sock = _connect(server.port)
        sock.sendall(b"GET /health HTTP/1.1\r\n")
        slow.append(sock)
    async with EnvClient(server.url, token=TOKEN, connect_timeout_s=5) as env:
        assert (await env.reset(seed=0)).observation is not None
    assert await server.healthy()
    for sock in slow:
        sock.close()


async def test_a_close_code_that_must_not_be_sent_is_not_echoed(server: ServerProcess) -> None:
    sock = _upgraded(server.port)
    sock.sendall(ws.encode_frame(ws.OP_CLOSE, struct.pack("!H", 1015), mask=True))
    reply = b""
    while chunk := sock.recv(4096):
        reply += chunk
    assert reply[0] & 0x0F == ws.OP_CLOSE
    assert struct.unpack("!H", reply[2:4])[0] == ws.CLOSE_PROTOCOL_ERROR
    sock.close()


def test_the_token_is_not_left_in_the_servers_initial_environment(server: ServerProcess) -> None:
    assert TOKEN.encode() not in Path(f"/proc/{server.proc.pid}/environ").read_bytes()
