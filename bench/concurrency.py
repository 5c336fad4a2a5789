"""Live sessions: how many one machine holds with every session answering steps, and their memory.

For each provider, sandboxes serving `toy_terminal` are started (`--per-sandbox` sessions each)
and sessions are opened level by level (each connected, authenticated and reset to a task).
At every level all live sessions step at once, `--rounds` times (a session whose episode
ended is reset): a session that fails to connect, reset or step is a failure. Memory per
session is the growth, since before the first sandbox, of the proportional set size (PSS:
shared pages split among their users) summed over every process on the host but this one —
servers, sandboxes and, for Docker, the engine's per-container shims — divided by the live
sessions; this process's own growth (the clients) is reported apart.

    python -m bench.concurrency [--providers local,docker] [--levels 256,512,1024,2048] [--per-sandbox 64]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import resource
import shutil
import tempfile
import time
from typing import Any

from bench.common import percentile, print_table, status_kib, write_result
from envs.builtin.toy_terminal.tasks import SUITE
from envs.client.base import BaseEnvClient
from providers.contract import Sandbox, SandboxProvider, SandboxSpec

OPEN_AT_ONCE = 64


def _pss_kib(pid: str) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return sum(int(line.split()[1]) for line in f if line.startswith("Pss:"))
    except OSError:  # gone, or a kernel thread
        return 0


def _others_pss_kib() -> int:
    me = str(os.getpid())
    return sum(_pss_kib(pid) for pid in os.listdir("/proc") if pid.isdigit() and pid != me)


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Fleet:
    """Sandboxes and the sessions open on them; sessions are placed on the first sandbox with room."""

    def __init__(self, provider: SandboxProvider, per_sandbox: int) -> None:
        self.provider = provider
        self.spec = SandboxSpec(env="toy_terminal", run_id="bench-concurrency", max_sessions=per_sandbox)
        self.per_sandbox = per_sandbox
        self.sandboxes: list[Sandbox] = []
        self.clients: list[BaseEnvClient] = []
        self.failures = {"open": 0, "step": 0}
        self.errors: collections.Counter[str] = collections.Counter()
        self._tasks = [t.id for t in SUITE.tasks("train")]

    async def _sandbox_for(self, index: int) -> Sandbox:
        while index // self.per_sandbox >= len(self.sandboxes):
            sandbox = await self.provider.create(self.spec)
            await self.provider.wait_ready(sandbox)
            self.sandboxes.append(sandbox)
        return self.sandboxes[index // self.per_sandbox]

    async def _open(self, index: int, sandbox: Sandbox) -> None:
        client = sandbox.handle.client()
        try:
            await client.connect()
            await client.reset(seed=index, task_id=self._tasks[index % len(self._tasks)])
        except Exception as e:
            self._failed("open", e)
            await client.close()
            return
        self.clients.append(client)

    def _failed(self, what: str, error: Exception) -> None:
        self.failures[what] += 1
        self.errors[f"{what}: {type(error).__name__}: {str(error)[:200]}"] += 1

    async def grow_to(self, sessions: int) -> None:
        start = len(self.clients) + self.failures["open"]
        for first in range(start, sessions, OPEN_AT_ONCE):
            batch = range(first, min(first + OPEN_AT_ONCE, sessions))
            sandboxes = [await self._sandbox_for(i) for i in batch]
            await asyncio.gather(*(self._open(i, s) for i, s in zip(batch, sandboxes, strict=True)))

    async def step_all(self) -> float:
        """One step on every live session at once; the round's wall time in seconds."""

        async def one(client: BaseEnvClient) -> None:
            try:
                result = await client.step({"command": "wc -l app.log"})
                if result.done:  # the task's step limit: start the episode again
                    await client.reset()
            except Exception as e:
                self._failed("step", e)

        start = time.perf_counter()
        await asyncio.gather(*(one(c) for c in self.clients))
        return time.perf_counter() - start

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.clients), return_exceptions=True)
        for sandbox in self.sandboxes:
            with contextlib.suppress(Exception):
                await self.provider.destroy(sandbox.id)


async def measure(provider: SandboxProvider, levels: list[int], per_sandbox: int, rounds: int) -> list[dict[str, Any]]:
    others_before, own_before = _others_pss_kib(), status_kib("VmRSS")
    fleet = Fleet(provider, per_sandbox)
    rows = []
    try:
        for level in levels:
            opened = time.perf_counter()
            await fleet.grow_to(level)
            open_s = time.perf_counter() - opened
            round_s = [await fleet.step_all() for _ in range(rounds)]
            live = len(fleet.clients)
            server_side = _others_pss_kib() - others_before
            rows.append(
                {
                    "sessions": level,
                    "live": live,
                    "sandboxes": len(fleet.sandboxes),
                    "open_failures": fleet.failures["open"],
                    "step_failures": fleet.failures["step"],
                    "open_s": open_s,
                    "step_round_p50_ms": percentile(round_s, 50) * 1000,
                    "steps_per_s": live / percentile(round_s, 50) if live else 0.0,
                    "kib_per_session": server_side / max(live, 1),
                    "client_kib_per_session": (status_kib("VmRSS") - own_before) / max(live, 1),
                    "errors": dict(fleet.errors),
                }
            )
    finally:
        await fleet.close()
    return rows


async def run_all(args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    root = tempfile.mkdtemp(prefix="hc-bench-")
    results = {}
    try:
        for name in args.providers:
            if name == "local":
                from providers.local import LocalProvider

                provider: SandboxProvider = LocalProvider(root=root)
            else:
                from providers.docker import DockerProvider

                provider = DockerProvider(root=root)
            try:
                results[name] = await measure(provider, args.levels, args.per_sandbox, args.rounds)
            finally:
                await provider.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--providers", type=lambda s: s.split(","), default=["local", "docker"])
    parser.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",")], default=[256, 512, 1024, 2048])
    parser.add_argument("--per-sandbox", type=int, default=64, help="sessions each sandbox's server accepts")
    parser.add_argument("--rounds", type=int, default=3, help="all-sessions step rounds per level")
    args = parser.parse_args()
    _raise_fd_limit()
    results = asyncio.run(run_all(args))
    rows = [
        [
            name,
            r["sessions"],
            r["live"],
            r["sandboxes"],
            r["open_failures"] + r["step_failures"],
            f"{r['open_s']:.1f}",
            f"{r['step_round_p50_ms']:.0f}",
            f"{r['steps_per_s']:.0f}",
            f"{r['kib_per_session'] / 1024:.2f}",
            f"{r['client_kib_per_session'] / 1024:.2f}",
        ]
        for name, levels in results.items()
        for r in levels
    ]
    headers = ["provider", "target", "live", "sandboxes", "failures", "open (s)", "all-step round p50 (ms)"]
    print_table([*headers, "steps/s", "MiB/session (host PSS)", "MiB/session (clients)"], rows)
    config = {"levels": args.levels, "per_sandbox": args.per_sandbox, "rounds": args.rounds}
    print(f"wrote {write_result('concurrency', config, results)}")


if __name__ == "__main__":
    main()
