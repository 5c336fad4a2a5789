"""What an ACA session pool's path costs per request: the HTTP session binding through the emulated
pool (TLS with a private CA, the platform's bearer token checked, the request forwarded to the
session) beside the same server reached directly, over the HTTP binding and over a WebSocket, one
run, the three measured in turn (rotating order) in every repetition.

The pool is tests/providers/aca/emulator.py's (this machine has no Azure): its hop is a local
HTTPS proxy, so this is the client-side and protocol cost, not Azure's network. Needs root
(the session is a local sandbox with its own uids), like the tests.

    python -m bench.aca_pool [--reps 5] [--requests 300]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import markdown_table, median_range, print_table, summarize, write_result
from envs.client.handle import EnvHandle
from providers.aca.provider import AcaProvider
from providers.contract import SandboxSpec
from providers.local import LocalProvider
from tests.private_ca import PrivateCA
from tests.providers.aca.emulator import SessionPoolEmulator, hand_made_pool
from tests.providers.aca.fake_azure import FakeCredential

PATHS = (
    ("HTTP session binding through the emulated pool (HTTPS, platform token)", "pool"),
    ("HTTP session binding, the same server directly (Unix socket)", "direct-http"),
    ("WebSocket, the same server directly (Unix socket)", "direct-ws"),
)


async def _per_request(handle: EnvHandle, requests: int) -> float:
    """Seconds per request of one session stepping back to back (`ls`, and a reset whenever the
    episode hits its step limit), after a warm-up."""
    async with handle.client() as env:

        async def one() -> None:
            if (await env.step({"command": "ls"})).done:
                await env.reset()

        await env.reset()
        for _ in range(20):
            await one()
        start = time.perf_counter()
        for _ in range(requests):
            await one()
        return (time.perf_counter() - start) / requests


async def measure(reps: int, requests: int) -> dict[str, list[float]]:
    root = Path(tempfile.mkdtemp(prefix="hc-aca-", dir="/tmp"))
    ca = PrivateCA(root)
    sandboxes = LocalProvider(root=root / "sessions")
    pool = SessionPoolEmulator(sandboxes, {"bench": hand_made_pool("toy_terminal")}.get, tls=ca.server_context())
    await pool.start()
    aca = AcaProvider(pool_endpoint=pool.pool_endpoint("bench"), ca_file=str(ca.cert_path), credential=FakeCredential())
    try:
        sandbox = await aca.create(SandboxSpec(env="toy_terminal", run_id="bench"))
        await aca.wait_ready(sandbox)
        (session,) = pool.sessions.values()
        socket_url, token = session.sandbox.endpoint, sandbox.secret()
        handles: dict[str, EnvHandle] = {
            "pool": sandbox.handle,
            "direct-http": EnvHandle.with_token(socket_url, token, transport="http"),
            "direct-ws": EnvHandle.with_token(socket_url, token),
        }
        samples: dict[str, list[float]] = {key: [] for _, key in PATHS}
        order = [key for _, key in PATHS]
        for rep in range(reps):
            for key in order[rep % 3 :] + order[: rep % 3]:
                samples[key].append(await _per_request(handles[key], requests))
        return samples
    finally:
        await aca.close()
        await pool.close()
        await sandboxes.close()


def _table(results: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    ws = results["direct-ws"]["seconds_per_request"]["median"]
    rows = [
        [r["label"], median_range(seconds, "{:.3f}", 1e3), f"{seconds['median'] / ws:.2f}×"]
        for r in results.values()
        for seconds in [r["seconds_per_request"]]
    ]
    return ["path (toy_terminal `ls`, 1 session)", "ms/request, median (range)", "vs WebSocket"], rows


def tables(record: dict[str, Any]) -> dict[str, str]:
    return {"paths": markdown_table(*_table(record["results"]))}


def headline(record: dict[str, Any]) -> list[tuple[str, str]]:
    results = record["results"]
    pool_ms, ws_ms = (results[k]["seconds_per_request"]["median"] * 1e3 for k in ("pool", "direct-ws"))
    return [
        (
            "an ACA session pool's path (emulated pool, no Azure) against a direct WebSocket",
            f"{pool_ms:.3f} against {ws_ms:.3f} ms a request",
        )
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    samples = asyncio.run(measure(args.reps, args.requests))
    results = {key: {"label": label, "seconds_per_request": summarize(samples[key])} for label, key in PATHS}
    print_table(*_table(results))
    path = write_result("aca_pool", {"reps": args.reps, "requests": args.requests}, results)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
