"""Client processes for the live-sessions benchmark: each holds its share of the sessions.

One process driving 16,384 WebSockets measures its own event loop, not the servers; so the
sessions are dealt out to `procs` worker processes, and the parent (which owns the provider
and its sandboxes) tells every worker at once what to do, over a pipe each:

    parent ──("open", [(index, handle, task), ...])──► worker: connect, authenticate, reset
           ──("step",)──────────────────────────────► worker: one step on each of its sessions
           ──("close",)─────────────────────────────► worker: close them all and exit

A step round is synchronised: the parent sends `step` to every worker, then waits for all of
their replies before the next round. Each worker stamps its round with the system-wide
monotonic clock (the same clock in every process on Linux), so the round's wall time is the
last worker's end less the first worker's start.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import multiprocessing
import resource
import time
from multiprocessing.connection import Connection
from typing import Any

from envs.client.base import BaseEnvClient
from envs.client.handle import EnvHandle

__all__ = ["ClientProcs", "Opening", "short_of_descriptors"]

OPEN_AT_ONCE = 64
"""Sessions each worker connects at a time: a burst of connects past a server's listen
backlog would be refused and retried, which measures the retry, not the server."""

STEP = {"command": "wc -l app.log"}

DESCRIPTOR_RESERVE = 64
"""A worker's descriptors besides its sessions: the interpreter's, its pipe, its event loop's."""

Opening = tuple[int, EnvHandle, str]
"""A session to open: its index (also its seed), the sandbox it goes to, and its task."""


class _Sessions:
    """One worker's sessions, and what failed on them."""

    def __init__(self) -> None:
        self.clients: list[BaseEnvClient] = []
        self.failures = {"open": 0, "step": 0}
        self.errors: collections.Counter[str] = collections.Counter()

    def _failed(self, what: str, error: Exception) -> None:
        self.failures[what] += 1
        self.errors[f"{what}: {type(error).__name__}: {str(error)[:200]}"] += 1

    async def open(self, openings: list[Opening]) -> None:
        room = asyncio.Semaphore(OPEN_AT_ONCE)

        async def one(index: int, handle: EnvHandle, task: str) -> None:
            client = handle.client()
            async with room:
                try:
                    await client.connect()
                    await client.reset(seed=index, task_id=task)
                except Exception as e:
                    self._failed("open", e)
                    await client.close()
                    return
            self.clients.append(client)

        await asyncio.gather(*(one(*opening) for opening in openings))

    async def step(self) -> list[float]:
        """One step on every session at once; each step's latency in seconds."""

        async def one(client: BaseEnvClient) -> float:
            start = time.perf_counter()
            try:
                result = await client.step(STEP)
                if result.done:  # the task's step limit: start the episode again
                    await client.reset()
            except Exception as e:
                self._failed("step", e)
            return time.perf_counter() - start

        return list(await asyncio.gather(*(one(c) for c in self.clients)))

    def report(self) -> dict[str, Any]:
        return {"live": len(self.clients), "failures": dict(self.failures), "errors": dict(self.errors)}

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.clients), return_exceptions=True)


async def _answer(sessions: _Sessions, command: str, args: list[Any]) -> dict[str, Any]:
    if command == "open":
        await sessions.open(args[0])
        return sessions.report()
    if command != "step":
        raise ValueError(f"no command {command!r}: open, step or close")
    start = time.perf_counter()
    latencies = await sessions.step()
    return {**sessions.report(), "start": start, "end": time.perf_counter(), "latencies": latencies}


async def _serve(conn: Connection) -> None:
    sessions = _Sessions()
    try:
        while True:
            # recv in a thread: the loop stays free to answer the sessions' keepalive pings
            command, *args = await asyncio.to_thread(conn.recv)
            if command == "close":
                return
            try:
                conn.send(await _answer(sessions, command, args))
            except Exception as e:  # the benchmark is wrong, not a session: the parent stops with it
                conn.send({"worker_failed": f"{command}: {type(e).__name__}: {e}"})
                return
    finally:
        await sessions.close()
        with contextlib.suppress(OSError):  # the parent may be gone
            conn.send({"closed": True})


def short_of_descriptors(sessions: int, procs: int) -> str | None:
    """Why `procs` workers cannot hold `sessions` under this process's hard open-file limit
    (which they inherit), or None when they can."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    share = -(-sessions // procs)
    if hard == resource.RLIM_INFINITY or share + DESCRIPTOR_RESERVE <= hard:
        return None
    enough = -(-sessions // (hard - DESCRIPTOR_RESERVE))
    return (
        f"{sessions} sessions over {procs} client processes is {share} descriptors each, past the hard "
        f"open-file limit of {hard}: use at least {enough} client processes, or raise the limit (ulimit -Hn)"
    )


def _worker(conn: Connection) -> None:
    # each session holds a descriptor: a worker's share of 16,384 needs more than the usual 1,024
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(_serve(conn))


class ClientProcs:
    """`procs` worker processes; session `i` goes to worker `i % procs`."""

    def __init__(self, procs: int) -> None:
        context = multiprocessing.get_context("spawn")  # no fork of a process that runs threads
        self._conns: list[Connection] = []
        self._procs = []
        for _ in range(procs):
            ours, theirs = context.Pipe()
            process = context.Process(target=_worker, args=(theirs,), daemon=True)
            process.start()
            theirs.close()
            self._conns.append(ours)
            self._procs.append(process)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p.pid is not None]

    async def _all(self, messages: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
        for conn, message in zip(self._conns, messages, strict=True):
            conn.send(message)
        replies = await asyncio.gather(*(asyncio.to_thread(conn.recv) for conn in self._conns))
        if failed := [r["worker_failed"] for r in replies if "worker_failed" in r]:
            raise RuntimeError(f"{len(failed)} client process(es) failed: {'; '.join(failed)}")
        return list(replies)

    async def open(self, openings: list[Opening]) -> list[dict[str, Any]]:
        shares: list[list[Opening]] = [[] for _ in self._conns]
        for opening in openings:
            shares[opening[0] % len(shares)].append(opening)
        return await self._all([("open", share) for share in shares])

    async def step(self) -> list[dict[str, Any]]:
        return await self._all([("step",)] * len(self._conns))

    async def close(self) -> None:
        for conn in self._conns:
            try:
                conn.send(("close",))
            except OSError:  # the worker is gone already
                continue
        for conn in self._conns:
            try:
                await asyncio.to_thread(conn.recv)
            except (EOFError, OSError):
                continue
        for process in self._procs:
            await asyncio.to_thread(process.join, 30)
