"""Step round trips per second through client and server: our runtime versus OpenEnv's.

Each server runs in its own process (as in a sandbox) and serves the same `PingEnv`, whose
async methods both servers await on the loop, and `SyncPingEnv`, the same with a synchronous
`step` only (as published OpenEnv environments are written), each against the other's;
the clients run in a measuring process: OpenEnv's `GenericEnvClient` against OpenEnv's
`create_app` server, our `EnvClient` against our server (over TCP like the reference,
and over the Unix socket sandboxes use; there also over the HTTP session binding, what an
HTTP-only ingress leaves). One session steps back to back; then 16
sessions step concurrently and the total rate is taken. A bare asyncio Unix-socket JSON
ping-pong is the floor any Python runtime pays.

Both event loops are measured, every contender on the same loop in one child process:
the standard asyncio loop (what OpenEnv ships with: it does not depend on uvloop) and
uvloop (what hillclimb ships with; uvicorn picks it up too when installed). Repetitions
interleave the loops and contenders so machine noise hits all alike; medians are reported.

    python -m bench.env_step [--seconds 2] [--reps 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.common import print_table, summarize, write_result
from envs.client.handle import EnvHandle
from envs.client.http_client import http_request
from envs.server.serve import LOOP_ENV_VAR, run_fast

TOKEN = "bench-token"
Stepper = Callable[[], Awaitable[Any]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _wait_http(url: str, timeout: float = 120.0) -> None:
    # Generous: six servers importing OpenEnv (gradio) at once on a loaded 2-core host took over 30 s.
    deadline = time.monotonic() + timeout
    while True:
        try:
            if (await http_request(url, "/health", timeout=1.0))[0] == 200:
                return
        except (TimeoutError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"server at {url} did not start")
        await asyncio.sleep(0.05)


class Servers:
    """Starts the three servers as subprocesses and stops them on exit."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self.urls: dict[str, str] = {}

    def _spawn(self, args: list[str]) -> None:
        self.procs.append(
            subprocess.Popen([sys.executable, *args], cwd=Path(__file__).parent.parent, stderr=subprocess.DEVNULL)
        )

    async def start(self) -> None:
        ours_port, ref_port, ours_sync_port, ref_sync_port = (_free_port() for _ in range(4))
        for name, env, listen in (
            ("ours-tcp", "PingEnv", ["--port", str(ours_port)]),
            ("ours-uds", "PingEnv", ["--uds", str(self.tmp / "env.sock")]),
            ("ours-tcp-sync", "SyncPingEnv", ["--port", str(ours_sync_port)]),
        ):
            token_file = self.tmp / f"{name}.token"
            token_file.write_text(TOKEN)
            target = f"bench.trivial_env:{env}"
            self._spawn(["-m", "envs", target, *listen, "--token-file", str(token_file), "--max-sessions", "64"])
        loop = os.environ.get(LOOP_ENV_VAR, "uvloop")
        self._spawn(["-m", "bench.openenv_server", str(ref_port), loop])
        self._spawn(["-m", "bench.openenv_server", str(ref_sync_port), loop, "SyncPingEnv"])
        self.urls = {
            "ours-tcp": f"ws://127.0.0.1:{ours_port}",
            "ours-uds": f"unix://{self.tmp / 'env.sock'}",
            "openenv": f"http://127.0.0.1:{ref_port}",
            "ours-tcp-sync": f"ws://127.0.0.1:{ours_sync_port}",
            "openenv-sync": f"http://127.0.0.1:{ref_sync_port}",
        }
        self._spawn(["-c", PINGPONG_SERVER, str(self.tmp / "pingpong.sock")])
        for url in self.urls.values():
            await _wait_http(url)
        while not (self.tmp / "pingpong.sock").exists():
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait(timeout=10)


PINGPONG_SERVER = """
import asyncio, json, sys
from envs.server.serve import LOOP_ENV_VAR, run_fast
async def handle(reader, writer):
    while line := await reader.readline():
        message = json.loads(line)
        writer.write(json.dumps({"type": "observation", "data": message["data"]}).encode() + b"\\n")
async def main():
    server = await asyncio.start_unix_server(handle, sys.argv[1])
    await server.serve_forever()
run_fast(main())
"""


async def _ours(url: str) -> tuple[Stepper, Callable[[], Awaitable[None]]]:
    return await _session(EnvHandle.with_token(url, TOKEN))


async def _ours_http(url: str) -> tuple[Stepper, Callable[[], Awaitable[None]]]:
    return await _session(EnvHandle.with_token(url, TOKEN, transport="http"))


async def _session(handle: EnvHandle) -> tuple[Stepper, Callable[[], Awaitable[None]]]:
    client = handle.client()
    await client.reset()
    return (lambda: client.step({"n": 1})), client.close


async def _openenv(url: str) -> tuple[Stepper, Callable[[], Awaitable[None]]]:
    from openenv.core.generic_client import GenericEnvClient

    client = GenericEnvClient(base_url=url)
    await client.connect()
    await client.reset()
    return (lambda: client.step({"n": 1})), client.close


async def _pingpong(path: str) -> tuple[Stepper, Callable[[], Awaitable[None]]]:
    reader, writer = await asyncio.open_unix_connection(path)

    async def step() -> Any:
        writer.write(json.dumps({"type": "step", "data": {"n": 1}}).encode() + b"\n")
        return json.loads(await reader.readline())

    async def close() -> None:
        writer.close()

    return step, close


async def _rate(
    opener: Callable[[str], Awaitable[tuple[Stepper, Any]]], url: str, sessions: int, seconds: float
) -> float:
    clients = [await opener(url) for _ in range(sessions)]
    for step, _ in clients:  # warm up every connection
        for _ in range(20):
            await step()
    counts = [0] * sessions
    deadline = time.perf_counter() + seconds

    async def drive(i: int, step: Stepper) -> None:
        while time.perf_counter() < deadline:
            await step()
            counts[i] += 1

    start = time.perf_counter()
    await asyncio.gather(*(drive(i, step) for i, (step, _) in enumerate(clients)))
    elapsed = time.perf_counter() - start
    for _, close in clients:
        await close()
    return sum(counts) / elapsed


CONTENDERS = (
    ("openenv (create_app + GenericEnvClient, TCP)", "openenv"),
    ("hillclimb (EnvServer + EnvClient, TCP)", "ours-tcp"),
    ("hillclimb (EnvServer + EnvClient, Unix socket)", "ours-uds"),
    ("hillclimb (EnvServer + HttpEnvClient, HTTP session binding, Unix socket)", "ours-uds-http"),
    ("bare asyncio Unix-socket JSON ping-pong", "pingpong"),
    ("openenv, synchronous step (create_app + GenericEnvClient, TCP)", "openenv-sync"),
    ("hillclimb, synchronous step (EnvServer + EnvClient, TCP)", "ours-tcp-sync"),
)
OPENERS = {
    "openenv": _openenv,
    "ours-tcp": _ours,
    "ours-uds": _ours,
    "ours-uds-http": _ours_http,
    "pingpong": _pingpong,
    "openenv-sync": _openenv,
    "ours-tcp-sync": _ours,
}


async def measure_once(seconds: float) -> dict[str, dict[str, float]]:
    """One repetition on this process's event loop: steps/s per contender and session count."""
    with tempfile.TemporaryDirectory(prefix="hc-bench-") as tmp:
        servers = Servers(Path(tmp))
        try:
            await servers.start()
            urls = {
                **servers.urls,
                "ours-uds-http": servers.urls["ours-uds"],
                "pingpong": str(Path(tmp) / "pingpong.sock"),
            }
            return {
                name: {f"{n}_sessions": await _rate(OPENERS[key], urls[key], n, seconds) for n in (1, 16)}
                for name, key in CONTENDERS
            }
        finally:
            servers.stop()


def run(seconds: float, reps: int) -> dict[str, Any]:
    """Interleave repetitions of both loops, each in a fresh child process."""
    samples: dict[str, dict[str, dict[str, list[float]]]] = {}
    for _ in range(reps):
        for loop in ("asyncio", "uvloop"):
            child = subprocess.run(
                [sys.executable, "-m", "bench.env_step", "--child", "--seconds", str(seconds)],
                env={**os.environ, LOOP_ENV_VAR: loop},
                capture_output=True,
                text=True,
                check=True,
                cwd=Path(__file__).parent.parent,
            )
            for name, by_sessions in json.loads(child.stdout.splitlines()[-1]).items():
                for key, rate in by_sessions.items():
                    samples.setdefault(loop, {}).setdefault(name, {}).setdefault(key, []).append(rate)
    return {
        loop: {name: {key: summarize(v) for key, v in by_key.items()} for name, by_key in by_name.items()}
        for loop, by_name in samples.items()
    }


REFERENCE = "openenv (create_app + GenericEnvClient, TCP)"
SYNC_REFERENCE = "openenv, synchronous step (create_app + GenericEnvClient, TCP)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="timed window per measurement")
    parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions per case")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_fast(measure_once(args.seconds))))
        return
    results = run(args.seconds, args.reps)
    rows = []
    for loop, by_name in results.items():
        for name, by_sessions in by_name.items():
            reference = SYNC_REFERENCE if "synchronous" in name else REFERENCE  # each against its own kind
            shipped = results["asyncio"][reference]  # OpenEnv does not ship uvloop
            same_loop = by_name[reference]
            for key, label in (("1_sessions", "1"), ("16_sessions", "16")):
                stats = by_sessions[key]
                rows.append(
                    [
                        loop,
                        name,
                        label,
                        f"{stats['median']:,.0f}",
                        f"{stats['min']:,.0f}-{stats['max']:,.0f}",
                        f"{stats['median'] / same_loop[key]['median']:.2f}x",
                        f"{stats['median'] / shipped[key]['median']:.2f}x",
                    ]
                )
    print_table(
        ["loop", "runtime", "sessions", "steps/s (median)", "range", "vs openenv, same loop", "vs openenv as shipped"],
        rows,
    )
    path = write_result("env_step", {"seconds": args.seconds, "reps": args.reps}, results)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
