"""The floor under any sandbox round trip on this host: two processes bouncing a small message.

One process writes 64 bytes to a Unix socket; the other, on the same event loop kind
(uvloop when installed), echoes them back. No framing, no JSON, no environment: what is
left is the two wakeups and the loop's own work on each side. `bench.rollout` runs it in
the same minute as the episodes, so a busy host shows in both figures.

    python -m bench.pingpong [--round-trips 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

from envs.server.serve import run_fast

_MESSAGE = b"x" * 64


class _Echo(asyncio.Protocol):
    def __init__(self, done: asyncio.Future[None]) -> None:
        self._done = done

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self._done.set_result(None)


class _Bouncer(asyncio.Protocol):
    def __init__(self) -> None:
        self.reply: asyncio.Future[None] | None = None
        self._got = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._got += len(data)
        if self._got >= len(_MESSAGE) and self.reply is not None:
            self._got -= len(_MESSAGE)
            self.reply.set_result(None)


async def _echo(fd: int) -> None:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    await loop.connect_accepted_socket(lambda: _Echo(done), socket.socket(fileno=fd))
    await done


async def _bounce(sock: socket.socket, round_trips: int) -> float:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.connect_accepted_socket(_Bouncer, sock)

    async def bounce(times: int) -> None:
        for _ in range(times):
            protocol.reply = loop.create_future()
            transport.write(_MESSAGE)
            await protocol.reply

    await bounce(100)  # the first reply waits for the echo process to start
    start = time.perf_counter()
    await bounce(round_trips)
    elapsed = time.perf_counter() - start
    transport.close()
    return elapsed / round_trips


def round_trip_ms(round_trips: int = 5000) -> float:
    """Mean seconds per round trip between this process and a fresh echo process, in ms."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    peer = subprocess.Popen(
        [sys.executable, "-m", "bench.pingpong", "--echo-fd", str(theirs.fileno())],
        pass_fds=[theirs.fileno()],
        cwd=Path(__file__).resolve().parents[1],
    )
    theirs.close()
    try:
        return 1000 * run_fast(_bounce(ours, round_trips))
    finally:
        peer.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--round-trips", type=int, default=5000)
    parser.add_argument("--echo-fd", type=int, help=argparse.SUPPRESS)  # the echo side, started by round_trip_ms
    args = parser.parse_args()
    if args.echo_fd is not None:
        run_fast(_echo(args.echo_fd))
        return
    print(f"{round_trip_ms(args.round_trips):.4f} ms per round trip")


if __name__ == "__main__":
    main()
