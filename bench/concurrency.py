"""Live sessions: how many one machine holds with every session answering steps, and their memory.

For each provider, sandboxes serving `toy_terminal` are started (`--per-sandbox` sessions each)
and sessions are opened level by level (each connected, authenticated and reset to a task) by
`--client-procs` worker processes (`bench.session_clients`), so that the servers, not one
client's event loop, are what is measured. At every level all live sessions step at once,
`--rounds` times, every worker at the same moment (a session whose episode ended is reset): a
session that fails to connect, reset or step is a failure.

Memory per session is PSS summed over the run's own processes (`bench.run_processes`), divided
by the live sessions: the sandboxes' side is every sandbox's process tree with the process
that starts them (the local provider's fork server; for Docker, each container's shim), and
the clients' side, reported apart, is the growth of the workers' private pages (USS) since
before their first session.

    python -m bench.concurrency [--providers local,docker] [--levels 1024,4096,16384] [--per-sandbox 64]
        [--client-procs 4] [--rounds 5] [--out PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import load_over_run, markdown_table, percentile, spread, write_result
from bench.run_processes import container_pids, cpu_s, descendants, host_cpu_s, parent, pss_kib, uss_kib
from bench.session_clients import ClientProcs, Opening, short_of_descriptors
from envs.builtin.toy_terminal.tasks import SUITE
from providers.contract import Sandbox, SandboxProvider, SandboxSpec

__all__ = ["headline", "main", "measure", "tables"]

CREATE_AT_ONCE = 4
"""Sandboxes started at a time while a level grows: Docker's starts overlap, a fork server's queue."""


class Fleet:
    """The sandboxes of one provider, and the pids that belong to them."""

    def __init__(self, kind: str, provider: SandboxProvider, per_sandbox: int) -> None:
        self.kind = kind
        self.provider = provider
        self.spec = SandboxSpec(env="toy_terminal", run_id="bench-concurrency", max_sessions=per_sandbox)
        self.per_sandbox = per_sandbox
        self.sandboxes: list[Sandbox] = []

    async def _start_one(self) -> Sandbox:
        sandbox = await self.provider.create(self.spec)
        await self.provider.wait_ready(sandbox)
        return sandbox

    async def hold(self, sessions: int) -> None:
        """Enough sandboxes for `sessions`."""
        while (missing := math.ceil(sessions / self.per_sandbox) - len(self.sandboxes)) > 0:
            self.sandboxes += await asyncio.gather(*(self._start_one() for _ in range(min(missing, CREATE_AT_ONCE))))

    def pids(self) -> set[int]:
        """Every sandbox's processes and what starts them: the fork server, or the containers' shims."""
        if self.kind == "docker":
            from providers.docker import NAME_PREFIX

            return container_pids([NAME_PREFIX + s.id for s in self.sandboxes])
        # the local provider's layout: <root>/<id>/meta.json names the sandbox's supervisor,
        # a child of the fork server
        root = Path(self.provider.root)  # type: ignore[attr-defined]
        supervisors = [json.loads((root / s.id / "meta.json").read_text())["pid"] for s in self.sandboxes]
        servers = {parent(pid) for pid in supervisors}
        return descendants({pid for pid in servers if pid is not None} | set(supervisors))

    async def close(self) -> None:
        await asyncio.gather(*(self.provider.destroy(s.id) for s in self.sandboxes), return_exceptions=True)


def _openings(fleet: Fleet, first: int, last: int) -> list[Opening]:
    tasks = [t.id for t in SUITE.tasks("train")]
    return [(i, fleet.sandboxes[i // fleet.per_sandbox].handle, tasks[i % len(tasks)]) for i in range(first, last)]


def _summed(replies: list[dict[str, Any]]) -> dict[str, Any]:
    errors: dict[str, int] = {}
    for reply in replies:
        for error, count in reply["errors"].items():
            errors[error] = errors.get(error, 0) + count
    return {
        "live": sum(r["live"] for r in replies),
        "open_failures": sum(r["failures"]["open"] for r in replies),
        "step_failures": sum(r["failures"]["step"] for r in replies),
        "errors": errors,
    }


async def _rounds(clients: ClientProcs, rounds: int) -> dict[str, Any]:
    """Each round's wall time (first worker's start to last worker's end) and how far apart the
    workers started it, every step's latency, and the workers' last replies."""
    walls, skews, latencies, replies = [], [], [], []
    for _ in range(rounds):
        replies = await clients.step()
        starts = [r["start"] for r in replies]
        walls.append(max(r["end"] for r in replies) - min(starts))
        skews.append(max(starts) - min(starts))
        latencies += [x for r in replies for x in r["latencies"]]
    return {"walls": walls, "skews": skews, "latencies": latencies, "replies": replies}


async def measure(
    kind: str, provider: SandboxProvider, levels: list[int], per_sandbox: int, rounds: int, procs: int
) -> list[dict[str, Any]]:
    fleet = Fleet(kind, provider, per_sandbox)
    clients = ClientProcs(procs)
    rows = []
    try:
        await clients.open([])  # the workers are up: their memory before any session
        clients_before = uss_kib(clients.pids)
        opened = 0
        for level in levels:
            load = os.getloadavg()[0]
            start = time.perf_counter()
            await fleet.hold(level)
            await clients.open(_openings(fleet, opened, level))
            open_s, opened = time.perf_counter() - start, level
            sandbox_pids = fleet.pids()
            cpu_before, host_before = (cpu_s(sandbox_pids), cpu_s(clients.pids)), host_cpu_s()
            ran = await _rounds(clients, rounds)
            cpu = cpu_s(sandbox_pids) - cpu_before[0], cpu_s(clients.pids) - cpu_before[1]
            host = [after - before for after, before in zip(host_cpu_s(), host_before, strict=True)]
            summed, walls, latencies = _summed(ran["replies"]), ran["walls"], ran["latencies"]
            live = max(summed["live"], 1)
            rows.append(
                {
                    "sessions": level,
                    "sandboxes": len(fleet.sandboxes),
                    "client_procs": procs,
                    **summed,
                    "open_s": open_s,
                    "round_s": walls,
                    "steps_per_s": [summed["live"] / w for w in walls],
                    "start_skew_ms": max(ran["skews"]) * 1000,  # the workers' rounds began this close
                    "step_latency_ms": {f"p{q}": percentile(latencies, q) * 1000 for q in (50, 99)}
                    if latencies
                    else {},
                    # where the rounds' CPU went: on one node the clients share the CPUs with
                    # the servers, so their cost is shown beside the servers', not hidden in it
                    "cpu_s_per_round": {"sandboxes": cpu[0] / rounds, "clients": cpu[1] / rounds},
                    # the whole host over the same rounds: busy seconds of all its CPUs' seconds
                    # (None when the rounds were shorter than one clock tick: nothing to divide)
                    "host_cpu_busy": host[0] / host[1] if host[1] else None,
                    "sandbox_processes": len(sandbox_pids),
                    "sandbox_kib_per_session": pss_kib(sandbox_pids) / live,
                    "client_kib_per_session": (uss_kib(clients.pids) - clients_before) / live,
                    "load_1m_before": load,
                }
            )
            print(
                f"{kind} {level}: {summed['live']} live, failures {summed['open_failures']}+{summed['step_failures']}"
            )
    finally:
        await clients.close()
        await fleet.close()
    return rows


def _provider(kind: str, root: str) -> SandboxProvider:
    if kind == "local":
        from providers.local import LocalProvider

        return LocalProvider(root=root)
    from providers.docker import DockerProvider

    return DockerProvider(root=root)


async def run_all(args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    root = tempfile.mkdtemp(prefix="hc-bench-")
    results = {}
    try:
        for kind in args.providers:
            provider = _provider(kind, root)
            try:
                results[kind] = await measure(
                    kind, provider, args.levels, args.per_sandbox, args.rounds, args.client_procs
                )
            finally:
                await provider.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return results


# -- rendering ------------------------------------------------------------------------------


def _failures(row: dict[str, Any]) -> int:
    return row["open_failures"] + row["step_failures"]


def tables(record: dict[str, Any]) -> dict[str, str]:
    """The `concurrency` block: a row per provider and level, medians over the step rounds."""
    rows, loads, cpus, rounds = [], [], record["machine"]["cpus"], record["config"]["rounds"]
    for kind, levels in record["results"].items():
        for r in levels:
            loads.append(r["load_1m_before"])
            cpu = r["cpu_s_per_round"]
            rows.append(
                [
                    kind,
                    f"{r['sessions']:,}",
                    f"{r['live']:,}",
                    str(_failures(r)),
                    f"{r['sandboxes']} × {r['sessions'] // r['sandboxes'] if r['sandboxes'] else 0}",
                    spread(r["round_s"], 0, 1000),
                    spread(r["steps_per_s"], 0),
                    f"{r['step_latency_ms']['p50']:.0f} / {r['step_latency_ms']['p99']:.0f}",
                    f"{cpu['sandboxes'] / r['live'] * 1e6:.0f} / {cpu['clients'] / r['live'] * 1e6:.0f}",
                    # the run's CPU over all the CPUs' time in the rounds, beside the host's busy share:
                    # the gap is other tenants; a host short of 100% means the rounds waited on no CPU
                    f"{(cpu['sandboxes'] + cpu['clients']) * rounds / (sum(r['round_s']) * cpus):.0%}"
                    f" / {'—' if r['host_cpu_busy'] is None else format(r['host_cpu_busy'], '.0%')}",
                    f"{r['sandbox_kib_per_session'] / 1024:.2f}",
                    f"{r['client_kib_per_session'] / 1024:.3f}",
                ]
            )
    headers = ["provider", "sessions", "live", "failures", "sandboxes × sessions", "all-step round (ms)", "steps/s"]
    headers += [
        "step p50 / p99 (ms)",
        "CPU µs/step: sandboxes / clients",
        "CPUs busy: the run / the host",
        "MiB/session: sandboxes",
        "clients",
    ]
    config = record["config"]
    method = (
        f"{config['rounds']} rounds per level, median (range); clients in {config['client_procs']} processes; "
        "memory: PSS of the sandboxes' processes, growth of the client processes' private pages."
    )
    return {"concurrency": f"{markdown_table(headers, rows)}\n\n{method} {load_over_run(loads)}"}


def headline(record: dict[str, Any]) -> list[tuple[str, str]]:
    """Per provider: the most live sessions held with no failure, and their memory."""
    rows = []
    for kind, levels in record["results"].items():
        held = [r for r in levels if _failures(r) == 0 and r["live"] == r["sessions"]]
        if not held:
            continue
        top = max(held, key=lambda r: r["sessions"])
        cpus = record["machine"]["cpus"]
        rows.append((f"Live sessions on one {cpus}-CPU node, zero failures ({kind})", f"{top['sessions']:,}"))
        memory = f"{top['sandbox_kib_per_session'] / 1024:.2f} MiB (+{top['client_kib_per_session'] / 1024:.3f} client)"
        rows.append((f"Memory per live session at {top['sessions']:,} ({kind})", memory))
        rate = f"{statistics.median(top['steps_per_s']):,.0f} steps/s"
        rows.append((f"All {top['sessions']:,} sessions stepping at once ({kind})", rate))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--providers", type=lambda s: s.split(","), default=["local", "docker"])
    parser.add_argument("--levels", type=lambda s: [int(x) for x in s.split(",")], default=[1024, 4096, 16384])
    parser.add_argument("--per-sandbox", type=int, default=64, help="sessions each sandbox's server accepts")
    parser.add_argument("--client-procs", type=int, default=4, help="worker processes the sessions are dealt to")
    parser.add_argument("--rounds", type=int, default=5, help="all-sessions step rounds per level")
    parser.add_argument("--out", type=Path, default=None, help="result file (default bench/results/concurrency.json)")
    args = parser.parse_args()
    if why := short_of_descriptors(max(args.levels), args.client_procs):
        parser.error(why)
    results = asyncio.run(run_all(args))
    config = {
        "levels": args.levels,
        "per_sandbox": args.per_sandbox,
        "client_procs": args.client_procs,
        "rounds": args.rounds,
    }
    path = write_result("concurrency", config, results, args.out)
    print(tables(json.loads(path.read_text()))["concurrency"])
    for kind, levels in results.items():
        for r in levels:
            print(f"{kind} {r['sessions']}: opened in {r['open_s']:.1f} s")
            for error, count in r["errors"].items():
                print(f"  {count} × {error}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
