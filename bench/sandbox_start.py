"""Sandbox start-up: cold create-to-ready and warm lease, ours next to OpenEnv's Docker provider.

Cold: from `create()` until the server answers `/health`, each sandbox destroyed before the
next (the first local one also starts the zygote: reported apart). The kinds alternate inside
each repetition, one start of each, in an order rotated every repetition, so that a slow
minute on the host lands on every kind alike instead of on whichever batch ran then; a kind's
figure is its median over the repetitions with their range, and each ratio is taken within a
repetition first (`docker cold / floor` of the same minute), then its median and range.

The kinds:
- local cold and Docker cold: our providers, as a run uses them.
- the floor under any Docker provider: a bare `docker run -d --network none` of the same image
  (the CLI, as OpenEnv uses it; no hardening, no token) until its server answers `/health` on
  a Unix socket polled every millisecond.
- OpenEnv's `LocalDockerProvider`: `docker run -d -p PORT:8000 IMAGE`, a fixed 1 s sleep, then
  `GET /health` every 0.5 s. This machine's engine has no bridge network (no container may
  reach any network), so the published port cannot be reached from the host: its
  `start_container` runs unmodified, and the same poll at its 0.5 s cadence runs from inside
  the container's network namespace (`nsenter`). The image is ours with the server on TCP port
  8000 and no token, as OpenEnv images serve.

Warm: `SandboxPool.lease()` from a pool kept `min_ready` warm, health check included, each
lease released (single-use sandboxes: the pool replaces them in the background). A lease does
not start anything, so these run after the cold repetitions, a batch each.

    python -m bench.sandbox_start [--reps 30] [--leases 50] [--no-docker] [--no-openenv] [--out PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.common import load_over_run, markdown_table, percentile, spread, summarize, write_result
from bench.run_processes import host_cpu_s
from hillclimb.config.sandboxes import PoolConfig
from orchestrator.pool import SandboxPool
from providers.contract import SandboxProvider, SandboxSpec

__all__ = ["cold_starts", "headline", "main", "tables", "warm_leases"]

SANDBOX_IMAGE = "hillclimb/sandbox:dev"
OPENENV_IMAGE = "hillclimb/sandbox-openenv:dev"

LOCAL, DOCKER, FLOOR, OPENENV = (
    "local cold",
    "docker cold",
    "bare docker run (floor)",
    "openenv LocalDockerProvider cold",
)
RATIOS = {
    "docker cold / floor": (DOCKER, FLOOR),
    "openenv / floor": (OPENENV, FLOOR),
    "openenv / docker cold": (OPENENV, DOCKER),
}
"""Ratios taken within each repetition: (numerator kind, denominator kind)."""

P99_MIN_SAMPLES = 100
"""Below this many samples a p99 is the maximum under another name, and is not shown."""

Start = Callable[[], Awaitable[float]]


async def cold_start(provider: SandboxProvider, spec: SandboxSpec) -> float:
    start = time.perf_counter()
    sandbox = await provider.create(spec)
    await provider.wait_ready(sandbox)
    took = time.perf_counter() - start
    await provider.destroy(sandbox.id)
    return took


async def cold_starts(provider: SandboxProvider, spec: SandboxSpec, count: int) -> list[float]:
    """`count` cold starts in a row (`bench.regression` runs this in two trees of the project)."""
    return [await cold_start(provider, spec) for _ in range(count)]


async def warm_leases(provider: SandboxProvider, spec: SandboxSpec, count: int, *, shared: bool) -> list[float]:
    pool = SandboxPool(provider, spec, PoolConfig(min_ready=4, health_max_age_s=0.0), shared=shared)
    await pool.start()
    samples = []
    try:
        for _ in range(count):
            await pool.wait_warm(120)
            start = time.perf_counter()
            lease = await pool.lease(timeout_s=60)
            samples.append(time.perf_counter() - start)
            await lease.release()
    finally:
        await pool.close()
    return samples


def _openenv_image() -> None:
    dockerfile = f'FROM {SANDBOX_IMAGE}\nCMD ["toy_terminal", "--host", "0.0.0.0", "--port", "8000", "--no-auth"]\n'
    subprocess.run(
        ["docker", "build", "--network", "none", "-q", "-t", OPENENV_IMAGE, "-"],
        input=dockerfile,
        text=True,
        check=True,
        capture_output=True,
    )


_PROBE = """
import socket, sys, time
while True:
    try:
        with socket.create_connection(("127.0.0.1", 8000), timeout=2.0) as s:
            s.sendall(b"GET /health HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n")
            if b" 200 " in s.recv(64):
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.5)
"""


def openenv_cold_start() -> float:
    """OpenEnv's LocalDockerProvider.start_container, then its /health poll from inside the netns."""
    from openenv.core.containers.runtime.providers import LocalDockerProvider

    provider = LocalDockerProvider()
    start = time.perf_counter()
    provider.start_container(OPENENV_IMAGE)
    pid = subprocess.run(
        ["docker", "inspect", "-f", "{{.State.Pid}}", provider._container_id],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    subprocess.run(["nsenter", "-t", pid, "-n", sys.executable, "-c", _PROBE], check=True, timeout=60)
    took = time.perf_counter() - start
    provider.stop_container()
    return took


async def bare_docker_cold_start() -> float:
    """`docker run -d --network none IMAGE`, then /health over its socket every millisecond."""
    from envs.client.http_client import http_request
    from providers.docker import CONTAINER_UID, SOCKET_DIR

    home = tempfile.mkdtemp(prefix="hc-bare-")
    os.chown(home, CONTAINER_UID, CONTAINER_UID)
    socket = f"unix://{home}/env.sock"
    start = time.perf_counter()
    command = ["docker", "run", "-d", "--network", "none", "--user", f"{CONTAINER_UID}:{CONTAINER_UID}"]
    command += ["-v", f"{home}:{SOCKET_DIR}", SANDBOX_IMAGE]
    command += ["toy_terminal", "--uds", f"{SOCKET_DIR}/env.sock", "--no-auth"]
    run = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
    container = (await run.communicate())[0].decode().strip()
    while True:
        with contextlib.suppress(OSError, TimeoutError, ValueError):
            if (await http_request(socket, "/health", timeout=1.0))[0] == 200:
                break
        await asyncio.sleep(0.001)
    took = time.perf_counter() - start
    await asyncio.to_thread(subprocess.run, ["docker", "rm", "-f", container], check=True, capture_output=True)
    shutil.rmtree(home, ignore_errors=True)
    return took


async def interleaved(starts: dict[str, Start], reps: int) -> tuple[dict[str, list[float]], dict[str, list[Any]]]:
    """`reps` repetitions of one start of each kind, the order rotated by one each repetition:
    every kind's samples in repetition order, and per repetition the host's 1-minute load at its
    start and the share of the host's CPU time that was busy during it (anyone's, ours too)."""
    kinds = list(starts)
    samples: dict[str, list[float]] = {kind: [] for kind in kinds}
    host: dict[str, list[Any]] = {"loads_1m": [], "host_cpu_busy": []}
    for rep in range(reps):
        host["loads_1m"].append(os.getloadavg()[0])
        before = host_cpu_s()
        shift = rep % len(kinds)
        for kind in kinds[shift:] + kinds[:shift]:
            samples[kind].append(await starts[kind]())
        busy, total = (after - start for after, start in zip(host_cpu_s(), before, strict=True))
        host["host_cpu_busy"].append(busy / total if total else None)  # None: shorter than a clock tick
    return samples, host


def _stats(samples: list[float]) -> dict[str, Any]:
    return {
        "samples_s": samples,
        "p50_s": percentile(samples, 50),
        "p99_s": percentile(samples, 99),
        **summarize(samples),
    }


async def run_all(args: argparse.Namespace) -> dict[str, Any]:
    from providers.local import LocalProvider

    root = tempfile.mkdtemp(prefix="hc-bench-")
    os.chmod(root, 0o711)  # as each provider makes its own root: sandbox uids pass through to theirs
    toy = SandboxSpec(env="toy_terminal", run_id="bench")
    shell = SandboxSpec(env="terminal", run_id="bench", max_sessions=1)
    local = LocalProvider(root=os.path.join(root, "local"))  # both providers live at once: a root each
    docker: SandboxProvider | None = None
    try:
        first = await cold_start(local, toy)  # the zygote starts here: apart from the rest
        starts: dict[str, Start] = {LOCAL: lambda: cold_start(local, toy)}
        if args.docker:
            from providers.docker import DockerProvider

            docker = DockerProvider(root=os.path.join(root, "docker"))
            await cold_start(docker, toy)  # the image's pages into the cache, the SDK's pool open
            starts |= {DOCKER: lambda: cold_start(docker, toy), FLOOR: bare_docker_cold_start}  # type: ignore[arg-type]
            if args.openenv:
                _openenv_image()
                starts[OPENENV] = lambda: asyncio.to_thread(openenv_cold_start)
        samples, host = await interleaved(starts, args.reps)
        cold = {kind: _stats(s) for kind, s in samples.items()}
        ratios = {
            name: [a / b for a, b in zip(samples[top], samples[bottom], strict=True)]
            for name, (top, bottom) in RATIOS.items()
            if top in samples and bottom in samples
        }
        warm_loads = [os.getloadavg()[0]]
        warm = {"local warm lease (shared)": _stats(await warm_leases(local, toy, args.leases * 4, shared=True))}
        warm["local warm lease (single-use)"] = _stats(await warm_leases(local, shell, args.leases, shared=False))
        if docker is not None:
            warm_loads.append(os.getloadavg()[0])
            warm["docker warm lease (single-use)"] = _stats(await warm_leases(docker, shell, args.leases, shared=False))
    finally:
        await local.close()
        if docker is not None:
            await docker.close()
        shutil.rmtree(root, ignore_errors=True)
    return {
        "local_first_s": first,
        "cold": cold,
        "ratios": ratios,
        **host,
        "warm": warm,
        "warm_loads_1m": warm_loads,
    }


# -- rendering ------------------------------------------------------------------------------


def _ms(stats: dict[str, Any], digits: int = 1) -> list[str]:
    p99 = f"{stats['p99_s'] * 1000:.{digits}f}" if stats["n"] >= P99_MIN_SAMPLES else "—"
    return [spread(stats["samples_s"], digits, 1000), p99, str(stats["n"])]


def tables(record: dict[str, Any]) -> dict[str, str]:
    """`sandbox_start`: cold starts per kind with the in-repetition ratios; `sandbox_warm`: leases."""
    results = record["results"]
    cold = [[kind, *_ms(stats)] for kind, stats in results["cold"].items()]
    cold += [[f"ratio: {name}", spread(r), "—", str(len(r))] for name, r in results["ratios"].items()]
    reps = len(results["loads_1m"])
    busy = spread([b * 100 for b in results["host_cpu_busy"] if b is not None], 0)
    cold_note = (
        f"{reps} repetitions, the kinds alternating inside each; median (range) in ms, ratios taken within a "
        f"repetition. The first local sandbox (zygote start included) took {results['local_first_s'] * 1000:.0f} ms; "
        f"the host's CPUs were {busy}% busy per repetition."
    )
    warm = [[kind, *_ms(stats, digits=2)] for kind, stats in results["warm"].items()]
    headers = ["measure", "median (range)", "p99", "n"]
    return {
        "sandbox_start": f"{markdown_table(headers, cold)}\n\n{cold_note} {load_over_run(results['loads_1m'])}",
        "sandbox_warm": f"{markdown_table(headers, warm)}\n\n{load_over_run(results['warm_loads_1m'])}",
    }


def headline(record: dict[str, Any]) -> list[tuple[str, str]]:
    results = record["results"]
    cold, ratios = results["cold"], results["ratios"]
    rows = [("Sandbox cold start, local (median)", f"{cold[LOCAL]['median'] * 1000:.1f} ms")]
    if DOCKER in cold:
        rows.append(("Sandbox cold start, Docker (median)", f"{cold[DOCKER]['median'] * 1000:.0f} ms"))
        rows.append(
            (
                "Docker cold start over a bare `docker run` (same repetition)",
                f"{spread(ratios['docker cold / floor'])}×",
            )
        )
    if "openenv / docker cold" in ratios:
        rows.append(
            (
                "OpenEnv `LocalDockerProvider` cold start over ours (Docker)",
                f"{spread(ratios['openenv / docker cold'])}×",
            )
        )
    shared = results["warm"]["local warm lease (shared)"]
    rows.append(("Warm lease of a shared local sandbox (median)", f"{shared['median'] * 1000:.2f} ms"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=30, help="repetitions of one cold start of each kind")
    parser.add_argument("--leases", type=int, default=50, help="single-use warm leases (shared: 4x as many)")
    parser.add_argument("--docker", action=argparse.BooleanOptionalAction, default=True, help="Docker kinds")
    parser.add_argument("--openenv", action=argparse.BooleanOptionalAction, default=True, help="OpenEnv's provider")
    parser.add_argument("--out", type=Path, default=None, help="result file (default bench/results/sandbox_start.json)")
    args = parser.parse_args()
    results = asyncio.run(run_all(args))
    config = {"reps": args.reps, "leases": args.leases, "docker": args.docker, "openenv": args.openenv}
    path = write_result("sandbox_start", config, results, args.out)
    for block in tables(json.loads(path.read_text())).values():
        print(f"{block}\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
