"""The one readiness poll every provider uses, against a real HTTP listener on a Unix socket."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hillclimb.provider_errors import ReadyTimeoutError, SandboxDiedError
from providers.contract import Sandbox
from providers.readiness import wait_healthy
from providers.toolkit import utc_from_timestamp


class Server:
    """Answers `/health` with 503 until `healthy_after` requests have been made, then 200."""

    def __init__(self, healthy_after: int | None) -> None:
        self.healthy_after = healthy_after
        self.requests = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        self.requests += 1
        ok = self.healthy_after is not None and self.requests > self.healthy_after
        status = b"200 OK" if ok else b"503 Service Unavailable"
        writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()


class Calls:
    def __init__(self, died_after: int | None = None) -> None:
        self.died_after = died_after
        self.died_calls = 0
        self.destroyed: list[str] = []

    async def died(self) -> str | None:
        self.died_calls += 1
        return "exited (code 3)" if self.died_after is not None and self.died_calls > self.died_after else None

    async def destroy(self, sandbox_id: str) -> None:
        self.destroyed.append(sandbox_id)

    async def log_tail(self, sandbox_id: str) -> str:
        return f"last words of {sandbox_id}"


async def _sandbox(tmp_path: Path, server: Server) -> AsyncIterator[Sandbox]:
    path = tmp_path / "env.sock"
    listener = await asyncio.start_unix_server(server.handle, str(path))
    try:
        yield Sandbox(id="sb-1", endpoint=f"unix://{path}", token=None, provider="t", created_at=utc_from_timestamp(0))
    finally:
        listener.close()
        await listener.wait_closed()


async def _wait(tmp_path: Path, server: Server, calls: Calls, timeout_s: float, death_check_s: float = 0.0) -> None:
    async for sandbox in _sandbox(tmp_path, server):
        await wait_healthy(
            sandbox,
            timeout_s,
            died=calls.died,
            destroy=calls.destroy,
            log_tail=calls.log_tail,
            death_check_s=death_check_s,
        )


async def test_returns_once_health_answers(tmp_path: Path) -> None:
    server, calls = Server(healthy_after=3), Calls()
    await _wait(tmp_path, server, calls, timeout_s=5)
    assert server.requests == 4 and not calls.destroyed


async def test_a_sandbox_that_never_answers_is_destroyed_at_the_deadline(tmp_path: Path) -> None:
    server, calls = Server(healthy_after=None), Calls()
    started = time.monotonic()
    with pytest.raises(ReadyTimeoutError, match="sb-1 was not ready within 1 s"):
        await _wait(tmp_path, server, calls, timeout_s=1.0)
    # Not before the deadline less one poll delay (50 ms at most); the upper bound only catches a hang.
    assert 0.75 < time.monotonic() - started < 15 and calls.destroyed == ["sb-1"]
    assert server.requests > 5  # polled, backing off, not once


async def test_a_sandbox_that_dies_is_reported_with_its_log_and_destroyed(tmp_path: Path) -> None:
    server, calls = Server(healthy_after=None), Calls(died_after=2)
    with pytest.raises(SandboxDiedError, match="sb-1 exited \\(code 3\\) while starting") as raised:
        await _wait(tmp_path, server, calls, timeout_s=5)
    assert raised.value.log_tail == "last words of sb-1" and calls.destroyed == ["sb-1"]


async def test_death_checks_are_spaced_out(tmp_path: Path) -> None:
    server, calls = Server(healthy_after=None), Calls()
    with pytest.raises(ReadyTimeoutError):
        await _wait(tmp_path, server, calls, timeout_s=1.5, death_check_s=0.5)
    assert 1 <= calls.died_calls <= 3 < server.requests
