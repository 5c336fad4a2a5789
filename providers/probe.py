"""The isolation probe: start a sandbox, ask it how isolated it is, judge the answer.

Works for every provider the same way: the sandbox serves the `probe` environment
(`envs/builtin/probe.py`), the host opens a listener on its own loopback and asks the sandbox
to connect to it, and makes a Unix socket the sandbox must not see. Egress is judged from
interfaces and routes, never by contacting an outside address.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from typing import Any

from pydantic import BaseModel

from providers.contract import SandboxProvider, SandboxSpec

_UNLIMITED = {"max", "-1"}


class Check(BaseModel):
    name: str
    ok: bool
    detail: str


class ProbeResult(BaseModel):
    provider: str
    sandbox_id: str
    checks: list[Check]
    report: dict[str, Any]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


def _limited(cgroup: dict[str, str], names: tuple[str, ...], rlimit: int, below: float) -> tuple[bool, str]:
    """A cgroup limit, or an rlimit under `below` (defaults such as the kernel's NPROC are not limits)."""
    for name in names:
        value = cgroup.get(name)
        if value is not None and value.split()[0] not in _UNLIMITED and int(value.split()[0]) < 2**62:
            return True, f"cgroup {name}={value}"
    if 0 <= rlimit < below:
        return True, f"rlimit {rlimit}"
    return False, f"no cgroup limit; rlimit {rlimit}"


def _refused(name: str, agent_can: bool, what: str) -> Check:
    return Check(name=name, ok=not agent_can, detail=f"the agent {'CAN' if agent_can else 'cannot'} {what}")


def evaluate(report: dict[str, Any]) -> list[Check]:
    """Pass/fail checks for an isolation report from `envs.builtin.probe.isolation_report`."""
    cg, rl = report["cgroup_limits"], report["rlimits"]
    loop = report["host_loopback"]
    agent, verifier = report["agent"], report["verifier"]
    if "error" in agent:
        return [Check(name="the agent's view", ok=False, detail=agent["error"])]
    if "error" in verifier:
        return [Check(name="the verifier's view", ok=False, detail=verifier["error"])]
    writable = agent["writable"]
    mem_ok, mem_detail = _limited(
        cg, ("memory.limit_in_bytes", "memory.max"), rl["address_space_bytes"], report["memory_total_bytes"]
    )
    pids_ok, pids_detail = _limited(cg, ("pids.max",), rl["nproc"], 65536)
    cpu_ok, cpu_detail = _limited(cg, ("cpu.cfs_quota_us", "cpu.max"), rl["cpu_s"], float("inf"))
    return [
        Check(
            name="only a loopback interface",
            ok=report["interfaces"] == ["lo"],
            detail=f"interfaces: {report['interfaces']}",
        ),
        Check(
            name="no route leaves the sandbox",
            ok=not report["routes"],
            detail="; ".join(report["routes"]) or "no routes",
        ),
        Check(
            name="host loopback listener unreachable",
            ok=loop.get("checked", False) and not loop.get("reachable", True),
            detail="connect to host 127.0.0.1: "
            + loop.get("error", "CONNECTED" if loop.get("reachable") else "not checked"),
        ),
        Check(
            name="unprivileged on the host",
            ok=report["host_uid"] != 0,
            detail=f"uid {report['uid']} inside, {report['host_uid']} on the host",
        ),
        Check(
            name="no new privileges",
            ok=report.get("NoNewPrivs") == "1",
            detail=f"NoNewPrivs={report.get('NoNewPrivs')}, CapEff={report.get('CapEff')}",
        ),
        Check(
            name="own process namespace",
            ok=report["visible_pids"] < 32,
            detail=f"{report['visible_pids']} processes visible",
        ),
        Check(
            name="host filesystem read-only",
            ok=not writable["root_fs"] and not writable["etc"],
            detail=f"the agent can write: {sorted(k for k, v in writable.items() if v)}",
        ),
        Check(
            name="private writable workdir and /tmp",
            ok=writable["workdir"] and writable["tmp"],
            detail=f"workdir {report['workdir']}",
        ),
        Check(
            name="the agent's commands under a uid of their own",
            ok=agent["uid"] != report["uid"],
            detail=f"server uid {report['uid']}, agent uid {agent['uid']}",
        ),
        _refused("task material unreadable", agent["reads_task_material"], "read the task suites"),
        _refused("server memory unreadable", agent["reads_server_memory"], "read /proc/<server>/"),
        _refused("symlink planting refused", writable["socket_dir"], "write the server's socket dir"),
        _refused("no host sockets", agent["sees_host_socket"], "see a Unix socket the host made"),
        Check(
            name="no process survives a step",
            ok=agent["survivors"] == 0,
            detail=f"{agent['survivors']} of the agent's processes (a setsid chain, a daemon) outlived their command",
        ),
        _verifier_out_of_reach(report["uid"], agent, verifier),
        Check(
            name="system call filter",
            ok=report.get("Seccomp") == "2" and report.get("new_user_namespace") != "allowed",
            detail=f"Seccomp={report.get('Seccomp')}, new user namespace: {report.get('new_user_namespace')}",
        ),
        Check(
            name="writes bounded, off the host's disk",
            ok=all(fs["type"] == "tmpfs" for fs in report["filesystems"].values()),
            detail=", ".join(
                f"{name}: {fs['type']} of {fs['size_mb']} MiB" for name, fs in report["filesystems"].items()
            ),
        ),
        Check(name="memory limited", ok=mem_ok, detail=mem_detail),
        Check(name="process count limited", ok=pids_ok, detail=pids_detail),
        Check(name="cpu limited", ok=cpu_ok, detail=cpu_detail),
    ]


def _verifier_out_of_reach(server_uid: int, agent: dict[str, Any], verifier: dict[str, Any]) -> Check:
    """The verifier runs under a uid of its own, with no agent process alive, non-dumpable, from a
    script it leaves nowhere, on copies the agent cannot reach."""
    problems = [
        problem
        for problem, found in (
            (
                f"it runs as uid {verifier['uid']}, the agent's or the server's",
                verifier["uid"] in (agent["uid"], server_uid),
            ),
            (f"{verifier['agent_processes']} agent processes alive meanwhile", verifier["agent_processes"] != 0),
            ("a program it runs can open its memory", verifier["memory_open_to_its_programs"]),
            ("its script is left on disk", verifier["script_left"]),
            ("the agent can list its copies", agent["reads_verify_dir"]),
        )
        if found
    ]
    detail = "; ".join(problems) or f"uid {verifier['uid']}, no agent process alive, non-dumpable, script gone"
    return Check(name="the verifier out of the agent's reach", ok=not problems, detail=detail)


async def probe(provider: SandboxProvider, spec: SandboxSpec | None = None, timeout_s: float = 60.0) -> ProbeResult:
    """Start a probe sandbox on `provider`, collect its report, destroy it, and judge."""
    spec = spec or SandboxSpec(env="probe", run_id="probe", ttl_s=600, max_sessions=1)
    listener = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="hillclimb-probe-") as host_dir:
        # A socket anyone on the host could connect to: a sandbox must not even see it.
        os.chmod(host_dir, 0o755)
        host_socket = os.path.join(host_dir, "host.sock")
        unix_listener = await asyncio.start_unix_server(lambda _r, w: w.close(), host_socket)
        os.chmod(host_socket, 0o777)
        sandbox = await provider.create(spec)
        try:
            await provider.wait_ready(sandbox, timeout_s)
            async with sandbox.handle.client() as env:
                await env.reset()
                result = await env.step({"host_port": port, "host_socket": host_socket})
            report = result.observation["report"]
        finally:
            await provider.destroy(sandbox.id)
            for server in (listener, unix_listener):
                server.close()
                await server.wait_closed()
    return ProbeResult(provider=provider.name, sandbox_id=sandbox.id, checks=evaluate(report), report=report)
