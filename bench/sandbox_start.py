"""Sandbox start-up: cold create-to-ready and warm lease, ours next to OpenEnv's Docker provider.

Cold: from `create()` until the server answers `/health`, one sandbox after another, each
destroyed before the next (the first local one also starts the zygote: reported apart).
Warm: `SandboxPool.lease()` from a pool kept `min_ready` warm, health check included,
each lease released (single-use sandboxes: the pool replaces them in the background).

OpenEnv's `LocalDockerProvider` runs `docker run -d -p PORT:8000 IMAGE`, sleeps 1 s, then
polls `GET /health` every 0.5 s. This machine's engine has no bridge network (no container
may reach any network), so the published port cannot be reached from the host: its
`start_container` runs unmodified, and the same `/health` poll at its 0.5 s cadence runs
from inside the container's network namespace (`nsenter`). The image is ours with the
server on TCP port 8000 and no token, as OpenEnv images serve. Its fixed 1 s sleep is most
of its figure, so the floor of any Docker provider stands beside it, in the same run: a bare
`docker run -d --network none` of the same image (the CLI, as OpenEnv uses it; no hardening,
no token) until its server answers `/health` on a Unix socket polled every millisecond.

    python -m bench.sandbox_start [--count 50] [--docker-count 20] [--openenv-count 10]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench.common import percentile, print_table, summarize, write_result
from hillclimb.config.sandboxes import PoolConfig
from orchestrator.pool import SandboxPool
from providers.contract import SandboxProvider, SandboxSpec

SANDBOX_IMAGE = "hillclimb/sandbox:dev"
OPENENV_IMAGE = "hillclimb/sandbox-openenv:dev"


def _stats(samples: list[float]) -> dict[str, Any]:
    return {"p50_s": percentile(samples, 50), "p99_s": percentile(samples, 99), **summarize(samples)}


async def cold_starts(provider: SandboxProvider, spec: SandboxSpec, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        sandbox = await provider.create(spec)
        await provider.wait_ready(sandbox)
        samples.append(time.perf_counter() - start)
        await provider.destroy(sandbox.id)
    return samples


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


def openenv_cold_starts(count: int) -> list[float]:
    """OpenEnv's LocalDockerProvider.start_container, then its /health poll from inside the netns."""
    from openenv.core.containers.runtime.providers import LocalDockerProvider

    _openenv_image()
    samples = []
    for _ in range(count):
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
        samples.append(time.perf_counter() - start)
        provider.stop_container()
    return samples


async def bare_docker_cold_starts(count: int) -> list[float]:
    """`docker run -d --network none IMAGE`, then /health over its socket every millisecond."""
    from envs.client.http_client import http_request
    from providers.docker import CONTAINER_UID, SOCKET_DIR

    samples = []
    for _ in range(count):
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
        samples.append(time.perf_counter() - start)
        subprocess.run(["docker", "rm", "-f", container], check=True, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)
    return samples


async def _measure(make: Callable[[], SandboxProvider], run: Callable[[SandboxProvider], Awaitable[Any]]) -> Any:
    provider = make()
    try:
        return await run(provider)
    finally:
        await provider.close()


async def run_all(args: argparse.Namespace) -> dict[str, Any]:
    from providers.local import LocalProvider

    root = tempfile.mkdtemp(prefix="hc-bench-")
    toy = SandboxSpec(env="toy_terminal", run_id="bench")
    shell = SandboxSpec(env="terminal", run_id="bench", max_sessions=1)
    results: dict[str, Any] = {}
    try:
        local = await _measure(lambda: LocalProvider(root=root), lambda p: cold_starts(p, toy, args.count + 1))
        results["local cold"] = {"first_s": local[0], **_stats(local[1:])}
        results["local warm lease (shared)"] = _stats(
            await _measure(lambda: LocalProvider(root=root), lambda p: warm_leases(p, toy, args.count * 4, shared=True))
        )
        results["local warm lease (single-use)"] = _stats(
            await _measure(lambda: LocalProvider(root=root), lambda p: warm_leases(p, shell, args.count, shared=False))
        )
        if args.docker_count:
            from providers.docker import DockerProvider

            results["docker cold"] = _stats(
                await _measure(lambda: DockerProvider(root=root), lambda p: cold_starts(p, toy, args.docker_count))
            )
            results["docker warm lease (single-use)"] = _stats(
                await _measure(
                    lambda: DockerProvider(root=root), lambda p: warm_leases(p, shell, args.docker_count, shared=False)
                )
            )
            results["bare docker run --network none (floor)"] = _stats(await bare_docker_cold_starts(args.docker_count))
        if args.openenv_count:
            results["openenv LocalDockerProvider cold"] = _stats(
                await asyncio.to_thread(openenv_cold_starts, args.openenv_count)
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50, help="local sandboxes (cold) and single-use leases")
    parser.add_argument("--docker-count", type=int, default=20, help="Docker sandboxes (0 skips Docker)")
    parser.add_argument("--openenv-count", type=int, default=10, help="OpenEnv LocalDockerProvider starts (0 skips)")
    args = parser.parse_args()
    results = asyncio.run(run_all(args))
    openenv = results.get("openenv LocalDockerProvider cold")
    floor = results.get("bare docker run --network none (floor)")
    rows = []
    for name, r in results.items():
        cold = "cold" in name and r is not openenv
        versus = f"{openenv['p50_s'] / r['p50_s']:.1f}x faster" if openenv and cold else ""
        docker_cold = cold and name.startswith("docker") or r is openenv
        over_floor = f"{r['p50_s'] / floor['p50_s']:.2f}x" if floor and docker_cold else ""
        rows.append([name, f"{r['p50_s'] * 1000:.2f}", f"{r['p99_s'] * 1000:.2f}", r["n"], versus, over_floor])
    print_table(["measure", "p50 (ms)", "p99 (ms)", "n", "vs OpenEnv (p50)", "vs bare docker run (p50)"], rows)
    if "local cold" in results:
        print(f"\nfirst local sandbox (zygote start included): {results['local cold']['first_s'] * 1000:.0f} ms")
    config = {"count": args.count, "docker_count": args.docker_count, "openenv_count": args.openenv_count}
    print(f"wrote {write_result('sandbox_start', config, results)}")


if __name__ == "__main__":
    main()
