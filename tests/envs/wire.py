"""Raw RFC 6455 peers for the tests, written apart from `envs.wire.websocket` so that they check it
rather than agree with it: `RawWS` is a client that writes any frame it is told to (masked or
not, fragmented, with reserved bits), and `FakePeer` is a server that completes the handshake
and then follows a script (go silent, hang up mid-request, replay canned replies).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TEXT, BINARY, CLOSE, PING, PONG, CONTINUATION = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0


def mask_bytes(payload: bytes, key: bytes) -> bytes:
    return bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, mask: bool = True, rsv: int = 0) -> bytes:
    """One frame exactly as RFC 6455 section 5.2 draws it."""
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    mask_bit = 0x80 if mask else 0
    n = len(payload)
    if n < 126:
        head = bytes([first, mask_bit | n])
    elif n < 1 << 16:
        head = bytes([first, mask_bit | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([first, mask_bit | 127]) + n.to_bytes(8, "big")
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + mask_bytes(payload, key)


async def read_frame(reader: asyncio.StreamReader) -> tuple[bool, int, bytes]:
    """(fin, opcode, payload) of the next frame; unmasks a masked one."""
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        n = int.from_bytes(await reader.readexactly(2), "big")
    elif n == 127:
        n = int.from_bytes(await reader.readexactly(8), "big")
    key = await reader.readexactly(4) if b1 & 0x80 else None
    payload = await reader.readexactly(n)
    return bool(b0 & 0x80), b0 & 0x0F, mask_bytes(payload, key) if key else payload


async def open_stream(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return await asyncio.open_unix_connection(parts.path)
    return await asyncio.open_connection(parts.hostname, parts.port)


def upgrade_request(token: str | None, path: str = "/ws", key: str = "dGhlIHNhbXBsZSBub25jZQ==") -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: test",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def http_exchange(url: str, raw: bytes, timeout: float = 10.0) -> tuple[int, bytes, bytes]:
    """Send raw request bytes; return the status, the response head and the rest up to EOF."""
    reader, writer = await open_stream(url)
    try:
        writer.write(raw)
        data = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), head, body


class RawWS:
    """A WebSocket client that breaks the rules on purpose."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, url: str, token: str | None = "test-token") -> RawWS:
        reader, writer = await open_stream(url)
        writer.write(upgrade_request(token))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 101 "), head
        expected = base64.b64encode(hashlib.sha1(b"dGhlIHNhbXBsZSBub25jZQ==" + GUID).digest())
        assert b"Sec-WebSocket-Accept: " + expected in head
        return cls(reader, writer)

    def send(self, opcode: int, payload: bytes = b"", **kwargs: Any) -> None:
        self.writer.write(frame(opcode, payload, **kwargs))

    def send_json(self, message: Any) -> None:
        self.send(TEXT, json.dumps(message).encode())

    async def recv(self, timeout: float = 10.0) -> tuple[int, bytes]:
        """The next data or close frame (pongs skipped)."""
        while True:
            _, opcode, payload = await asyncio.wait_for(read_frame(self.reader), timeout)
            if opcode != PONG:
                return opcode, payload

    async def recv_json(self, timeout: float = 10.0) -> dict[str, Any]:
        opcode, payload = await self.recv(timeout)
        assert opcode == TEXT, (opcode, payload)
        return json.loads(payload)

    async def request(self, message: Any) -> dict[str, Any]:
        self.send_json(message)
        return await self.recv_json()

    async def close_code(self, timeout: float = 10.0) -> int:
        """Read until the server's close frame; return its code, then expect the server to hang up."""
        while True:
            opcode, payload = await self.recv(timeout)
            if opcode == CLOSE:
                assert await asyncio.wait_for(self.reader.read(), timeout) == b""
                return int.from_bytes(payload[:2], "big")

    async def aclose(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class FakePeer:
    """A scripted WebSocket server on loopback: handshake, then `script(reader, writer)`."""

    def __init__(self, script: Script) -> None:
        self._script = script
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self.connections = 0

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"ws://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/ws"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        self._tasks.append(asyncio.current_task())  # type: ignore[arg-type]
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        key = next(line.split(b":", 1)[1].strip() for line in lines if line.lower().startswith(b"sec-websocket-key"))
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
        writer.write(
            f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept}\r\n\r\n".encode()
        )
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await self._script(reader, writer)

    async def aclose(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()


async def reply_with(replies: list[dict[str, Any]], reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """FakePeer script: answer each client data frame with the next canned reply, and a close frame in kind."""
    pending = list(replies)
    while True:
        _, opcode, payload = await read_frame(reader)
        if opcode == CLOSE:
            writer.write(frame(CLOSE, payload[:2], mask=False))
            writer.close()
            return
        if opcode in (TEXT, BINARY) and pending:
            writer.write(frame(TEXT, json.dumps(pending.pop(0)).encode(), mask=False))


async def eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait until `predicate()` holds (server-side bookkeeping finishes a moment after the client's)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)
