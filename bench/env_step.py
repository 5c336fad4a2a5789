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
processes, over a Unix socket and over TCP, is the floor any Python runtime pays. Each window
also reads the CPU time the server process and the measuring process spent per step, which is
what a one-session round trip is made of.

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
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import load_over_run, median_range, print_table, summarize, write_result
from envs.client.handle import EnvHandle
from envs.client.http_client import http_request
from envs.server.serve import LOOP_ENV_VAR, run_fast

TOKEN = "bench-token"
CPU = "cpu_us_per_step"
SIDES = ("server", "client")
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


FLOOR_UDS = "bare asyncio Unix-socket JSON ping-pong"
FLOOR_TCP = "bare asyncio TCP JSON ping-pong"
REFERENCE = "openenv (create_app + GenericEnvClient, TCP)"
SYNC_REFERENCE = "openenv, synchronous step (create_app + GenericEnvClient, TCP)"
OURS_SYNC_TCP = "hillclimb, synchronous step (EnvServer + EnvClient, TCP)"
OURS_SYNC_UDS = "hillclimb, synchronous step (EnvServer + EnvClient, Unix socket)"
OURS_TCP = "hillclimb (EnvServer + EnvClient, TCP)"
CONTENDERS = (
    Contender(REFERENCE, "openenv", "openenv", "TCP", None, FLOOR_TCP),
    Contender(OURS_TCP, "ours-tcp", "ours", "TCP", REFERENCE, FLOOR_TCP),
    Contender("hillclimb (EnvServer + EnvClient, Unix socket)", "ours-uds", "ours", "Unix", REFERENCE, FLOOR_UDS),
    Contender(
        "hillclimb (EnvServer + HttpEnvClient, HTTP session binding, Unix socket)",
        "ours-uds",
        "ours-http",
        "Unix",
        REFERENCE,
        FLOOR_UDS,
    ),
    Contender(SYNC_REFERENCE, "openenv-sync", "openenv", "TCP", None, FLOOR_TCP),
    Contender(OURS_SYNC_TCP, "ours-tcp-sync", "ours", "TCP", SYNC_REFERENCE, FLOOR_TCP),
    Contender(OURS_SYNC_UDS, "ours-uds-sync", "ours", "Unix", SYNC_REFERENCE, FLOOR_UDS),
    Contender(
        "hillclimb, synchronous step on the session's thread (inline calls off, TCP)",
        "ours-tcp-sync-thread",
        "ours",
        "TCP",
        SYNC_REFERENCE,
        FLOOR_TCP,
    ),
    Contender(FLOOR_UDS, "pingpong-uds", "pingpong", "Unix", None, None),
    Contender(FLOOR_TCP, "pingpong-tcp", "pingpong", "TCP", None, None),
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
        self.pids: dict[str, int] = {}

    def _spawn(self, name: str, args: list[str]) -> None:
        proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=Path(__file__).parent.parent,
            env={**os.environ, LOOP_ENV_VAR: self.loop},
            stderr=subprocess.DEVNULL,
        )
        self.procs.append(proc)
        self.pids[name] = proc.pid

    def _ours(self, name: str, env: str, *, uds: bool, flags: tuple[str, ...] = ()) -> None:
        token_file = self.tmp / f"{name}.token"
        token_file.write_text(TOKEN)
        if uds:
            listen, self.urls[name] = ["--uds", str(self.tmp / f"{name}.sock")], f"unix://{self.tmp / name}.sock"
        else:
            port = _free_port()
            listen, self.urls[name] = ["--port", str(port)], f"ws://127.0.0.1:{port}"
        target = f"bench.trivial_env:{env}"
        self._spawn(
            name, ["-m", "envs", target, *listen, "--token-file", str(token_file), "--max-sessions", "64", *flags]
        )

    def _openenv(self, name: str, env: str) -> None:
        port = _free_port()
        self._spawn(
            name, ["-m", "bench.openenv_server", str(port), "auto" if self.loop == "uvloop" else "asyncio", env]
        )
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
        self._spawn("pingpong-uds", ["-c", PINGPONG_SERVER, str(self.tmp / "pingpong.sock")])
        self._spawn("pingpong-tcp", ["-c", PINGPONG_SERVER, str(pingpong_port)])
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


def _cpu_s(pid: int) -> float:
    """CPU seconds (user and system, every thread) process `pid` has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Window:
    """One timed window: steps/s, and the CPU each side spent per step (µs)."""

    rate: float
    server_cpu_us: float
    client_cpu_us: float


async def _rate(
    opener: Callable[[str], Awaitable[Session]], url: str, server_pid: int, sessions: int, seconds: float
) -> Window:
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

    server_cpu, client_cpu, start = _cpu_s(server_pid), time.process_time(), time.perf_counter()
    await asyncio.gather(*(drive(i, step) for i, (step, _) in enumerate(clients)))
    elapsed = time.perf_counter() - start
    server_cpu, client_cpu = _cpu_s(server_pid) - server_cpu, time.process_time() - client_cpu
    for _, close in clients:
        await close()
    steps = sum(counts)
    return Window(steps / elapsed, 1e6 * server_cpu / steps, 1e6 * client_cpu / steps)


async def measure_once(seconds: float, loop: str, reverse: bool = False) -> dict[str, Any]:
    """One repetition on this process's event loop (`loop`, which the servers run too), the
    contenders in `reverse` order when asked: {contender: {"N_sessions": steps/s}}, and under
    "cpu_us_per_step" {contender: {"N_sessions": {"server": µs, "client": µs}}}. (`bench.regression`
    reads the rows starting with "hillclimb".)"""
    with tempfile.TemporaryDirectory(prefix="hc-bench-") as tmp:
        servers = Servers(Path(tmp), loop)
        try:
            await servers.start()
            windows: dict[str, dict[str, Window]] = {}
            for c in reversed(CONTENDERS) if reverse else CONTENDERS:
                url, pid = servers.urls[c.server], servers.pids[c.server]
                windows[c.name] = {
                    f"{n}_sessions": await _rate(OPENERS[c.client], url, pid, n, seconds) for n in SESSIONS
                }
        finally:
            servers.stop()
    out: dict[str, Any] = {c.name: {k: w.rate for k, w in windows[c.name].items()} for c in CONTENDERS}
    out[CPU] = {
        c.name: {k: {"server": w.server_cpu_us, "client": w.client_cpu_us} for k, w in windows[c.name].items()}
        for c in CONTENDERS
    }
    return out


def _child(seconds: float, loop: str, reverse: bool) -> dict[str, Any]:
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
            cpu = rates.pop(CPU)
            repetitions.append(
                {"rep": rep, "loop": loop, "reversed": reverse, "load_before": before, "load_after": os.getloadavg()}
                | {"rates": rates, CPU: cpu}
            )
    return summarize_repetitions(repetitions, loops)


def summarize_repetitions(repetitions: list[dict[str, Any]], loops: tuple[str, ...]) -> dict[str, Any]:
    """The result: "steps" {loop: {contender: {"N_sessions": summary of steps/s}}}, CPU the same
    with {"server": summary, "client": summary} of µs per step, and every repetition's samples."""

    def over(loop: str, sample: Callable[[dict[str, Any]], float]) -> dict[str, float]:
        return summarize([sample(r) for r in repetitions if r["loop"] == loop])

    keys = [f"{n}_sessions" for n in SESSIONS]
    steps = {
        loop: {c.name: {k: over(loop, lambda r, c=c, k=k: r["rates"][c.name][k]) for k in keys} for c in CONTENDERS}
        for loop in loops
    }
    cpu = {
        loop: {
            c.name: {
                k: {side: over(loop, lambda r, c=c, k=k, side=side: r[CPU][c.name][k][side]) for side in SIDES}
                for k in keys
            }
            for c in CONTENDERS
        }
        for loop in loops
    }
    return {"steps": steps, CPU: cpu, "repetitions": repetitions}


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


def _ratio(record: dict[str, Any], loop: str, name: str, other: str, key: str) -> str:
    """`name`'s median rate over `other`'s (the figure the tables and headline print beside the
    two medians), then the range of the ratio per repetition, both measured in the same child."""
    steps = record["results"]["steps"][loop]
    paired = [
        r["rates"][name][key] / r["rates"][other][key] for r in record["results"]["repetitions"] if r["loop"] == loop
    ]
    ratio = steps[name][key]["median"] / steps[other][key]["median"]
    return f"{ratio:.2f}× ({min(paired):.2f}–{max(paired):.2f})"


def _method_line(record: dict[str, Any]) -> str:
    loads = [r["load_before"][0] for r in record["results"]["repetitions"]]
    config = record["config"]
    return (
        f"{config['reps']} repetitions of {config['seconds']:g} s windows per case, medians with (min–max). "
        + load_over_run(loads)
    )


def tables(record: dict[str, Any]) -> dict[str, str]:
    """The docs' markdown by block: "steps", every row on each loop, steps/s and two ratios of
    medians with their range per repetition (against OpenEnv on the same loop, and the floor's rate
    over the row's: how many of the bare ping-pong's round trips, same transport, one step takes);
    "cpu", the CPU each side spends per step; "targets", the synchronous step's targets, met or not,
    with the gap."""
    contenders = record["config"]["contenders"]
    steps = [
        "| loop (both sides) | runtime | sessions | steps/s | × OpenEnv, same loop | × floor's round trip |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    cpu = [
        "| loop (both sides) | runtime | sessions | round trip, µs | server CPU, µs/step | client CPU, µs/step |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for loop, by_name in record["results"]["steps"].items():
        for c in contenders:
            for n in record["config"]["sessions"]:
                key = f"{n}_sessions"
                against = _ratio(record, loop, c["name"], c["reference"], key) if c["reference"] else "—"
                floor = _ratio(record, loop, c["floor"], c["name"], key) if c["floor"] else "—"
                rate = median_range(by_name[c["name"]][key])
                steps.append(f"| {loop} | {c['name']} | {n} | {rate} | {against} | {floor} |")
                used = record["results"][CPU][loop][c["name"]][key]
                trip = f"{1e6 / by_name[c['name']][key]['median']:.0f}"
                server, client = (f"{used[side]['median']:.0f}" for side in SIDES)
                cpu.append(f"| {loop} | {c['name']} | {n} | {trip} | {server} | {client} |")
    method = "\n\n" + _method_line(record)
    return {
        "steps": "\n".join(steps) + method,
        "cpu": "\n".join(cpu) + method,
        "targets": _targets(record) + method,
    }


TARGET_VS_OPENENV = 3.0
"""The synchronous step's target against OpenEnv on the same loop (issue 37), 1 and 16 sessions."""
TARGET_VS_FLOOR = 1.5
"""At most this many of the bare ping-pong's round trips per synchronous step, 1 session."""


def _targets(record: dict[str, Any]) -> str:
    lines = ["| loop (both sides) | target | needs | measured | met |", "| --- | --- | --- | --- | --- |"]
    gaps = []
    for loop, by_name in record["results"]["steps"].items():
        for n in record["config"]["sessions"]:
            key = f"{n}_sessions"
            ours, theirs = by_name[OURS_SYNC_TCP][key]["median"], by_name[SYNC_REFERENCE][key]["median"]
            needs = TARGET_VS_OPENENV * theirs
            lines.append(
                f"| {loop} | sync step ≥ {TARGET_VS_OPENENV:g}× OpenEnv, TCP, {n} session{'s' * (n > 1)} "
                f"| ≥ {needs:,.0f} steps/s | {ours:,.0f} ({ours / theirs:.2f}×) | {'yes' if ours >= needs else 'no'} |"
            )
            if n == 1 and ours < needs:
                gaps.append(_gap(record, loop, needs))
        for name, floor, transport in ((OURS_SYNC_TCP, FLOOR_TCP, "TCP"), (OURS_SYNC_UDS, FLOOR_UDS, "Unix socket")):
            ours, bare = by_name[name]["1_sessions"]["median"], by_name[floor]["1_sessions"]["median"]
            lines.append(
                f"| {loop} | sync step ≤ {TARGET_VS_FLOOR:g}× the floor's round trip, {transport}, 1 session "
                f"| ≥ {bare / TARGET_VS_FLOOR:,.0f} steps/s | {ours:,.0f} ({bare / ours:.2f}×) "
                f"| {'yes' if bare / ours <= TARGET_VS_FLOOR else 'no'} |"
            )
    return "\n".join(lines) + "".join("\n\n" + gap for gap in gaps)


def _gap(record: dict[str, Any], loop: str, needs: float) -> str:
    """Why a synchronous step misses 3× OpenEnv at one session: the round trip it would need
    against the floor's, and where each side's CPU goes, from the same run."""
    steps, used = record["results"]["steps"][loop], record["results"][CPU][loop]

    def trip(name: str) -> float:
        return 1e6 / steps[name]["1_sessions"]["median"]

    def cpu(name: str, side: str) -> float:
        return used[name]["1_sessions"][side]["median"]

    return (
        f"{loop}: {TARGET_VS_OPENENV:g}× OpenEnv at one session needs a round trip of {1e6 / needs:.0f} µs; "
        f"ours takes {trip(OURS_SYNC_TCP):.0f} µs (TCP) and {trip(OURS_SYNC_UDS):.0f} µs (Unix socket), "
        f"the bare JSON ping-pong {trip(FLOOR_TCP):.0f} µs (TCP) and {trip(FLOOR_UDS):.0f} µs (Unix socket), "
        f"OpenEnv {trip(SYNC_REFERENCE):.0f} µs. At one session a step is one wakeup of each process after the "
        f"other: per step our server spends {cpu(OURS_SYNC_TCP, 'server'):.0f} µs of CPU (TCP) and our client "
        f"{cpu(OURS_SYNC_TCP, 'client'):.0f} µs; the ping-pong's server {cpu(FLOOR_TCP, 'server'):.0f} µs and "
        f"client {cpu(FLOOR_TCP, 'client'):.0f} µs; OpenEnv's server {cpu(SYNC_REFERENCE, 'server'):.0f} µs and "
        f"client {cpu(SYNC_REFERENCE, 'client'):.0f} µs."
    )


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
        for name, floor in ((OURS_SYNC_UDS, FLOOR_UDS), (OURS_SYNC_TCP, FLOOR_TCP)):
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
