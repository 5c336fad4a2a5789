"""Step round trips per second through client and server: our runtime against OpenEnv's, same loop.

Each server runs in its own process (as in a sandbox) and serves the same `PingEnv`, whose
async methods both servers await on the loop, or `SyncPingEnv`, the same with a synchronous
`step` only (as published OpenEnv environments are written), each against the other's. The
clients run in a measuring process: OpenEnv's `GenericEnvClient` against OpenEnv's `create_app`
server served as its docs serve it (`bench.openenv_server`), our `EnvClient` against our server
over TCP like the reference, and over the Unix socket sandboxes use; there also over the HTTP
session binding, what an HTTP-only ingress leaves. A synchronous step is measured as shipped
(inline on the loop once proven short, `envs.server.inline`) and with inline calls off (on the
session's thread, as OpenEnv runs it). One session steps back to back; then 16 sessions step
concurrently and the total rate is taken. A bare JSON-lines ping-pong between two asyncio
processes, over a Unix socket and over TCP, is the floor any Python runtime pays.

Every comparison is on one event loop, both sides: uvloop (what uvicorn picks by itself when
installed, and what hillclimb ships with), then the standard asyncio loop on both sides. Each
repetition runs both loops, each in a fresh child process with fresh servers, and alternates
the order (of the loops, and of the contenders inside a child) from one repetition to the
next, so that a drift in the host's load does not favour one side. The host's load average is
recorded beside every repetition; the result keeps every sample.

    python -m bench.env_step [--seconds 2] [--reps 5] [--loops uvloop asyncio] [--out PATH]

`tables(record)` and `headline(record)` render a result file's record for the docs (`bench.render`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import print_table, summarize, write_result
from envs.client.handle import EnvHandle
from envs.client.http_client import http_request
from envs.server.serve import LOOP_ENV_VAR, run_fast

TOKEN = "bench-token"
LOOPS = ("uvloop", "asyncio")
SESSIONS = (1, 16)
WARMUP_STEPS = 100
"""Steps per connection before the timed window: past the 64 a synchronous step must take
before it runs inline (envs.server.inline.FIRST_PROOF)."""
Stepper = Callable[[], Awaitable[Any]]
Session = tuple[Stepper, Callable[[], Awaitable[None]]]


@dataclass(frozen=True)
class Contender:
    """One row: a client against a server. The name is the row's identity in result files and in
    `bench.regression`'s before/after (which takes the rows starting with "hillclimb")."""

    name: str
    server: str
    """The key of the server it steps (`Servers.start`)."""
    client: str
    """How it connects: "openenv", "ours", "ours-http" or "pingpong"."""
    transport: str
    reference: str | None
    """The OpenEnv row it is compared with, on the same loop (None: it is a reference or a floor)."""
    floor: str | None
    """The bare ping-pong row over its transport."""


_FLOOR_UDS = "bare asyncio Unix-socket JSON ping-pong"
_FLOOR_TCP = "bare asyncio TCP JSON ping-pong"
REFERENCE = "openenv (create_app + GenericEnvClient, TCP)"
SYNC_REFERENCE = "openenv, synchronous step (create_app + GenericEnvClient, TCP)"
OURS_SYNC_TCP = "hillclimb, synchronous step (EnvServer + EnvClient, TCP)"
OURS_SYNC_UDS = "hillclimb, synchronous step (EnvServer + EnvClient, Unix socket)"
OURS_TCP = "hillclimb (EnvServer + EnvClient, TCP)"
CONTENDERS = (
    Contender(REFERENCE, "openenv", "openenv", "TCP", None, _FLOOR_TCP),
    Contender(OURS_TCP, "ours-tcp", "ours", "TCP", REFERENCE, _FLOOR_TCP),
    Contender("hillclimb (EnvServer + EnvClient, Unix socket)", "ours-uds", "ours", "Unix", REFERENCE, _FLOOR_UDS),
    Contender(
        "hillclimb (EnvServer + HttpEnvClient, HTTP session binding, Unix socket)",
        "ours-uds",
        "ours-http",
        "Unix",
        REFERENCE,
        _FLOOR_UDS,
    ),
    Contender(SYNC_REFERENCE, "openenv-sync", "openenv", "TCP", None, _FLOOR_TCP),
    Contender(OURS_SYNC_TCP, "ours-tcp-sync", "ours", "TCP", SYNC_REFERENCE, _FLOOR_TCP),
    Contender(OURS_SYNC_UDS, "ours-uds-sync", "ours", "Unix", SYNC_REFERENCE, _FLOOR_UDS),
    Contender(
        "hillclimb, synchronous step on the session's thread (inline calls off, TCP)",
        "ours-tcp-sync-thread",
        "ours",
        "TCP",
        SYNC_REFERENCE,
        _FLOOR_TCP,
    ),
    Contender(_FLOOR_UDS, "pingpong-uds", "pingpong", "Unix", None, None),
    Contender(_FLOOR_TCP, "pingpong-tcp", "pingpong", "TCP", None, None),
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _wait_http(url: str, timeout: float = 120.0) -> None:
    # Generous: servers importing OpenEnv (gradio) at once on a loaded 2-core host took over 30 s.
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


PINGPONG_SERVER = """
import asyncio, json, sys
from envs.server.serve import run_fast
async def handle(reader, writer):
    while line := await reader.readline():
        message = json.loads(line)
        writer.write(json.dumps({"type": "observation", "data": message["data"]}).encode() + b"\\n")
async def main():
    if sys.argv[1].isdigit():
        server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))
    else:
        server = await asyncio.start_unix_server(handle, sys.argv[1])
    await server.serve_forever()
run_fast(main())
"""


class Servers:
    """Starts the servers as subprocesses, on this process's loop kind, and stops them on exit."""

    def __init__(self, tmp: Path, loop: str) -> None:
        self.tmp = tmp
        self.loop = loop
        self.procs: list[subprocess.Popen[bytes]] = []
        self.urls: dict[str, str] = {}

    def _spawn(self, args: list[str]) -> None:
        self.procs.append(
            subprocess.Popen(
                [sys.executable, *args],
                cwd=Path(__file__).parent.parent,
                env={**os.environ, LOOP_ENV_VAR: self.loop},
                stderr=subprocess.DEVNULL,
            )
        )

    def _ours(self, name: str, env: str, *, uds: bool, flags: tuple[str, ...] = ()) -> None:
        token_file = self.tmp / f"{name}.token"
        token_file.write_text(TOKEN)
        if uds:
            listen, self.urls[name] = ["--uds", str(self.tmp / f"{name}.sock")], f"unix://{self.tmp / name}.sock"
        else:
            port = _free_port()
            listen, self.urls[name] = ["--port", str(port)], f"ws://127.0.0.1:{port}"
        target = f"bench.trivial_env:{env}"
        self._spawn(["-m", "envs", target, *listen, "--token-file", str(token_file), "--max-sessions", "64", *flags])

    def _openenv(self, name: str, env: str) -> None:
        port = _free_port()
        self._spawn(["-m", "bench.openenv_server", str(port), "auto" if self.loop == "uvloop" else "asyncio", env])
        self.urls[name] = f"http://127.0.0.1:{port}"

    async def start(self) -> None:
        self._openenv("openenv", "PingEnv")
        self._openenv("openenv-sync", "SyncPingEnv")
        self._ours("ours-tcp", "PingEnv", uds=False)
        self._ours("ours-uds", "PingEnv", uds=True)
        self._ours("ours-tcp-sync", "SyncPingEnv", uds=False)
        self._ours("ours-uds-sync", "SyncPingEnv", uds=True)
        self._ours("ours-tcp-sync-thread", "SyncPingEnv", uds=False, flags=("--no-inline-sync-calls",))
        for url in self.urls.values():
            await _wait_http(url)
        pingpong_port = _free_port()
        self._spawn(["-c", PINGPONG_SERVER, str(self.tmp / "pingpong.sock")])
        self._spawn(["-c", PINGPONG_SERVER, str(pingpong_port)])
        self.urls["pingpong-uds"] = str(self.tmp / "pingpong.sock")
        self.urls["pingpong-tcp"] = f"127.0.0.1:{pingpong_port}"
        while not (self.tmp / "pingpong.sock").exists() or not _listening(pingpong_port):
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait(timeout=10)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


async def _ours(url: str) -> Session:
    return await _session(EnvHandle.with_token(url, TOKEN))


async def _ours_http(url: str) -> Session:
    return await _session(EnvHandle.with_token(url, TOKEN, transport="http"))


async def _session(handle: EnvHandle) -> Session:
    client = handle.client()
    await client.reset()
    return (lambda: client.step({"n": 1})), client.close


async def _openenv(url: str) -> Session:
    from openenv.core.generic_client import GenericEnvClient

    client = GenericEnvClient(base_url=url)
    await client.connect()
    await client.reset()
    return (lambda: client.step({"n": 1})), client.close


async def _pingpong(address: str) -> Session:
    if address.startswith("127.0.0.1:"):
        reader, writer = await asyncio.open_connection("127.0.0.1", int(address.split(":")[1]))
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    else:
        reader, writer = await asyncio.open_unix_connection(address)

    async def step() -> Any:
        writer.write(json.dumps({"type": "step", "data": {"n": 1}}).encode() + b"\n")
        return json.loads(await reader.readline())

    async def close() -> None:
        writer.close()

    return step, close


OPENERS: dict[str, Callable[[str], Awaitable[Session]]] = {
    "openenv": _openenv,
    "ours": _ours,
    "ours-http": _ours_http,
    "pingpong": _pingpong,
}


async def _rate(opener: Callable[[str], Awaitable[Session]], url: str, sessions: int, seconds: float) -> float:
    clients = [await opener(url) for _ in range(sessions)]
    for step, _ in clients:  # warm up every connection (and prove a synchronous step short)
        for _ in range(WARMUP_STEPS):
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


async def measure_once(seconds: float, loop: str, reverse: bool = False) -> dict[str, dict[str, float]]:
    """One repetition on this process's event loop (`loop`, which the servers run too): steps/s
    per contender and session count, the contenders in `reverse` order when asked."""
    with tempfile.TemporaryDirectory(prefix="hc-bench-") as tmp:
        servers = Servers(Path(tmp), loop)
        try:
            await servers.start()
            rates: dict[str, dict[str, float]] = {}
            for c in reversed(CONTENDERS) if reverse else CONTENDERS:
                url = servers.urls[c.server]
                rates[c.name] = {f"{n}_sessions": await _rate(OPENERS[c.client], url, n, seconds) for n in SESSIONS}
            return {c.name: rates[c.name] for c in CONTENDERS}
        finally:
            servers.stop()


def _child(seconds: float, loop: str, reverse: bool) -> dict[str, dict[str, float]]:
    args = ["-m", "bench.env_step", "--child", "--seconds", str(seconds), *(["--reverse"] if reverse else [])]
    done = subprocess.run(
        [sys.executable, *args],
        env={**os.environ, LOOP_ENV_VAR: loop},
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parent.parent,
    )
    return json.loads(done.stdout.splitlines()[-1])


def run(seconds: float, reps: int, loops: tuple[str, ...] = LOOPS) -> dict[str, Any]:
    """`reps` repetitions of every loop, each in a fresh child process; even repetitions run the
    loops and the contenders in order, odd ones in reverse. Every sample is kept, with the host's
    load average (1, 5, 15 min) before and after its child."""
    repetitions = []
    for rep in range(reps):
        reverse = rep % 2 == 1
        for loop in reversed(loops) if reverse else loops:
            before = os.getloadavg()
            rates = _child(seconds, loop, reverse)
            repetitions.append(
                {"rep": rep, "loop": loop, "reversed": reverse, "load_before": before, "load_after": os.getloadavg()}
                | {"rates": rates}
            )
    return {"steps": summarize_repetitions(repetitions, loops), "repetitions": repetitions}


def summarize_repetitions(repetitions: list[dict[str, Any]], loops: tuple[str, ...]) -> dict[str, Any]:
    """{loop: {contender: {"N_sessions": summary}}} over the repetitions' samples."""
    return {
        loop: {
            c.name: {
                key: summarize([r["rates"][c.name][key] for r in repetitions if r["loop"] == loop])
                for key in (f"{n}_sessions" for n in SESSIONS)
            }
            for c in CONTENDERS
        }
        for loop in loops
    }


def config(seconds: float, reps: int, loops: tuple[str, ...]) -> dict[str, Any]:
    return {
        "seconds": seconds,
        "reps": reps,
        "loops": list(loops),
        "sessions": list(SESSIONS),
        "warmup_steps": WARMUP_STEPS,
        "contenders": [
            {"name": c.name, "transport": c.transport, "reference": c.reference, "floor": c.floor} for c in CONTENDERS
        ],
    }


# Rendering: pure functions of a result file's record (bench.render calls them).


def _paired(record: dict[str, Any], loop: str, name: str, other: str, key: str) -> list[float]:
    """Per repetition, `name`'s rate over `other`'s: both measured in the same child minute."""
    return [
        r["rates"][name][key] / r["rates"][other][key] for r in record["results"]["repetitions"] if r["loop"] == loop
    ]


def _ratio(samples: list[float]) -> str:
    return f"{statistics.median(samples):.2f}× ({min(samples):.2f}–{max(samples):.2f})"


def _rate_cell(stats: dict[str, float]) -> str:
    return f"{stats['median']:,.0f} ({stats['min']:,.0f}–{stats['max']:,.0f})"


def _provenance(record: dict[str, Any]) -> str:
    loads = [r["load_before"][0] for r in record["results"]["repetitions"]]
    config = record["config"]
    return (
        f"Measured at {record['commit']} on {record['date']}: {config['reps']} repetitions of "
        f"{config['seconds']:g} s windows per case, medians with (min–max); host load (1-min average) "
        f"{statistics.median(loads):.2f} ({min(loads):.2f}–{max(loads):.2f}) at the start of each child."
    )


def tables(record: dict[str, Any]) -> dict[str, str]:
    """The docs' markdown: "steps", every row on each loop, steps/s and two ratios taken per
    repetition (against OpenEnv on the same loop, and the floor's rate over the row's: how many
    times the bare ping-pong's round trip a step takes, same transport)."""
    contenders = record["config"]["contenders"]
    lines = [
        "| loop (both sides) | runtime | sessions | steps/s | × OpenEnv, same loop | × floor's round trip |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for loop, by_name in record["results"]["steps"].items():
        for c in contenders:
            for n in record["config"]["sessions"]:
                key = f"{n}_sessions"
                against = _ratio(_paired(record, loop, c["name"], c["reference"], key)) if c["reference"] else "—"
                floor = _ratio(_paired(record, loop, c["floor"], c["name"], key)) if c["floor"] else "—"
                rate = _rate_cell(by_name[c["name"]][key])
                lines.append(f"| {loop} | {c['name']} | {n} | {rate} | {against} | {floor} |")
    return {"steps": "\n".join(lines) + "\n\n" + _provenance(record)}


def headline(record: dict[str, Any]) -> list[tuple[str, str]]:
    """The README's headline rows: the synchronous step against OpenEnv on each loop, and against the floor."""
    rows = []
    for loop, by_name in record["results"]["steps"].items():
        sides = []
        for n in record["config"]["sessions"]:
            key = f"{n}_sessions"
            ours, theirs = by_name[OURS_SYNC_TCP][key]["median"], by_name[SYNC_REFERENCE][key]["median"]
            sides.append(f"{ours:,.0f} against {theirs:,.0f} ({ours / theirs:.2f}×)")
        what = f"synchronous env step, {loop} both sides, TCP, 1 / 16 sessions: hillclimb against OpenEnv"
        rows.append((what, " / ".join(sides)))
    for loop, by_name in record["results"]["steps"].items():
        floors = []
        for name, floor in ((OURS_SYNC_UDS, _FLOOR_UDS), (OURS_SYNC_TCP, _FLOOR_TCP)):
            ours, bare = by_name[name]["1_sessions"]["median"], by_name[floor]["1_sessions"]["median"]
            floors.append(f"{ours:,.0f} against {bare:,.0f} ({bare / ours:.2f}×)")
        what = f"synchronous env step, {loop}, 1 session, Unix socket / TCP: hillclimb against the bare ping-pong floor"
        rows.append((what, " / ".join(floors)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="timed window per measurement")
    parser.add_argument("--reps", type=int, default=5, help="repetitions of every loop, alternating the order")
    parser.add_argument("--loops", nargs="+", choices=LOOPS, default=list(LOOPS), help="event loops, both sides")
    parser.add_argument("--out", type=Path, help="the result file (default bench/results/env_step.json)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--reverse", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # one repetition on $HILLCLIMB_EVENT_LOOP; bench.regression runs this too
        loop = "asyncio" if os.environ.get(LOOP_ENV_VAR) == "asyncio" else "uvloop"
        print(json.dumps(run_fast(measure_once(args.seconds, loop, args.reverse))))
        return
    loops = tuple(args.loops)
    results = run(args.seconds, args.reps, loops)
    path = write_result("env_step", config(args.seconds, args.reps, loops), results, args.out)
    record = json.loads(path.read_text())
    print(tables(record)["steps"])
    print_table(["headline", "figure"], [list(row) for row in headline(record)])
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
