"""`probe`: an environment that reports, from inside a sandbox, how isolated it is.

`hillclimb sandbox probe` starts a sandbox serving this environment and calls its
`report` tool; the host side (`providers.probe`) turns the report into pass/fail checks.
The server's view is read from /proc, /sys and the socket API; the agent's view comes from
short bash scripts run as the agent would run a command (through the sandbox's warden),
which try what an adversarial agent would: write outside its work dir, read the task
suites, the server's memory and the verifier's copies, plant a file where the server keeps
its socket, see a socket the host made, leave processes behind (a deep chain of `setsid`s
and a daemon) for the next command to find. The verifier's view comes from a verification
run as the terminal environment runs one (`envs.sandbox.verification`): its uid, whether any agent
process is alive while it runs, whether a program it runs can read its memory, whether its
script is left on disk. The only connection attempted is to the host-loopback port the
caller names (it must fail).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import resource
import shlex
import socket
from importlib import resources
from pathlib import Path
from typing import Any

from envs.authoring.base import Action, Environment, Observation, State, tool
from envs.builtin.terminal.env import WORKDIR_ENV_VAR
from envs.builtin.terminal.shell import run_command
from envs.sandbox.agent_commands import role_uid
from envs.sandbox.verification import VERIFY_DIR_ENV_VAR, run_verifier

_RLIMITS = {
    "address_space_bytes": resource.RLIMIT_AS,
    "cpu_s": resource.RLIMIT_CPU,
    "file_bytes": resource.RLIMIT_FSIZE,
    "nofile": resource.RLIMIT_NOFILE,
    "nproc": resource.RLIMIT_NPROC,
}


class ProbeAction(Action):
    host_port: int | None = None
    """A port listening on the host's loopback, to try to reach."""
    host_socket: str | None = None
    """The path of a Unix socket the host made (world-connectable), to look for."""


class ProbeObservation(Observation):
    report: dict[str, Any] = {}


def _routes() -> list[str]:
    """Routes through any interface but `lo`, IPv4 and IPv6."""
    found = []
    for table, iface_col in (("/proc/net/route", 0), ("/proc/net/ipv6_route", -1)):
        try:
            lines = Path(table).read_text().splitlines()
        except OSError:
            continue
        for line in lines[1 if table.endswith("/route") else 0 :]:
            cols = line.split()
            if cols and cols[iface_col] != "lo":
                found.append(f"{table.rsplit('/', 1)[1]}: {' '.join(cols[:4])}")
    return found


def _host_loopback(port: int | None) -> dict[str, Any]:
    if port is None:
        return {"checked": False}
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return {"checked": True, "reachable": True}
    except OSError as e:
        return {"checked": True, "reachable": False, "error": errno.errorcode.get(e.errno or 0, str(e))}


def _status_fields() -> dict[str, str]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("CapEff", "NoNewPrivs", "Seccomp"):
            fields[key] = value.strip()
    return fields


def _host_uid() -> int:
    """Our uid as the host sees it (differs from getuid() inside a user namespace)."""
    for line in Path("/proc/self/uid_map").read_text().splitlines():
        inside, outside, count = map(int, line.split())
        if inside <= os.getuid() < inside + count:
            return outside + os.getuid() - inside
    return os.getuid()


def _cgroup_limits() -> dict[str, str]:
    limits = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        candidates = {
            "memory": [("memory", "memory.limit_in_bytes")],
            "pids": [("pids", "pids.max")],
            "cpu": [("cpu", "cpu.cfs_quota_us")],
            "cpu,cpuacct": [("cpu,cpuacct", "cpu.cfs_quota_us")],
            "": [("", "memory.max"), ("", "pids.max"), ("", "cpu.max")],
        }.get(controllers, [])
        for sub, name in candidates:
            # A container sees its own group at the hierarchy's root, not at its path.
            for file in (Path("/sys/fs/cgroup", sub, path.lstrip("/"), name), Path("/sys/fs/cgroup", sub, name)):
                if file.exists():
                    limits[name] = file.read_text().strip()
                    break
    return limits


def _memory_total() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 0


_AGENT_SCRIPT = r"""
writable() { f="$1/.probe-$$"; if (: > "$f") 2>/dev/null; then rm -f -- "$f"; echo true; else echo false; fi; }
readable() { if cat -- "$1" > /dev/null 2>&1; then echo true; else echo false; fi; }
printf '{"uid": %s, "writable": {"workdir": %s, "tmp": %s, "root_fs": %s, "etc": %s, "socket_dir": %s},' \
  "$(id -u)" "$(writable "$PROBE_WORKDIR")" "$(writable /tmp)" "$(writable /)" "$(writable /etc)" \
  "$(writable "$PROBE_SOCKET_DIR")"
printf ' "reads_task_material": %s, "reads_server_memory": %s, "sees_host_socket": %s,' \
  "$(readable "$PROBE_TASKS")" "$(readable "/proc/$PROBE_SERVER_PID/environ")" \
  "$(if [ -n "$PROBE_HOST_SOCKET" ] && [ -e "$PROBE_HOST_SOCKET" ]; then echo true; else echo false; fi)"
printf ' "reads_verify_dir": %s}\n' \
  "$(if ls -- "$PROBE_VERIFY_DIR" >/dev/null 2>&1; then echo true; else echo false; fi)"
"""

_LEAVE_PROCESSES = r"""
printf 'd=$1; if [ "$d" -gt 0 ]; then bash "$0" $((d-1)) & fi; exec -a hillclimb-probe-leftover sleep 600\n' \
  > /tmp/.probe-chain.sh
setsid bash /tmp/.probe-chain.sh 80 >/dev/null 2>&1 </dev/null &
setsid -f bash -c 'exec -a hillclimb-probe-leftover sleep 600' >/dev/null 2>&1 </dev/null
sleep 1
"""
_COUNT_LEFTOVERS = "ps -e -o args= | grep -c '^hillclimb-probe-leftover'"

_VERIFIER_SCRIPT = r"""
printf '{"uid": %s, "agent_processes": %s, "script_left": %s, "memory_open_to_its_programs": %s}\n' \
  "$(id -u)" "$(ps -e -o uid= | awk -v a="$PROBE_AGENT_UID" '$1 == a' | wc -l)" \
  "$(if [ -e "$0" ]; then echo true; else echo false; fi)" \
  "$(if bash -c 'exec 3< /proc/$PPID/mem' 2>/dev/null; then echo true; else echo false; fi)"
"""


async def agent_report(host_socket: str | None) -> dict[str, Any]:
    """What a command of the agent can do, run the way the terminal environment runs one."""
    workdir = os.environ.get(WORKDIR_ENV_VAR) or os.getcwd()
    tasks = resources.files("envs.builtin.terminal").joinpath("tasks.yaml")
    socket_path = os.environ.get("HILLCLIMB_ENV_SOCKET", "")
    variables = {
        "PROBE_WORKDIR": workdir,
        "PROBE_SOCKET_DIR": os.path.dirname(socket_path) if socket_path else "/nonexistent",
        "PROBE_TASKS": str(tasks),
        "PROBE_SERVER_PID": str(os.getpid()),
        "PROBE_HOST_SOCKET": host_socket or "",
        "PROBE_VERIFY_DIR": os.environ.get(VERIFY_DIR_ENV_VAR, "/nonexistent"),
    }
    assignments = "".join(f"{name}={shlex.quote(value)} " for name, value in variables.items())
    result = await run_command(
        f"{assignments}bash -c {shlex.quote(_AGENT_SCRIPT)}", workdir, timeout_s=10, output_limit=4096
    )
    try:
        report = dict(json.loads(result.output))
    except ValueError:
        return {"error": f"the agent's probe failed (exit {result.exit_code}): {result.output.strip()}"}
    await run_command(_LEAVE_PROCESSES, workdir, timeout_s=10, output_limit=4096)
    survivors = await run_command(_COUNT_LEFTOVERS, workdir, timeout_s=10, output_limit=4096)
    counted = survivors.output.strip()  # grep -c exits 1 when it counts none
    report["survivors"] = int(counted) if counted.isdigit() else -1
    return report


async def verifier_report() -> dict[str, Any]:
    """What a verification sees, run the way the terminal environment runs one."""
    workdir = os.environ.get(WORKDIR_ENV_VAR) or os.getcwd()
    script = f"PROBE_AGENT_UID={role_uid('agent')}\n{_VERIFIER_SCRIPT}"
    result = await run_verifier(script, workdir, timeout_s=30, output_limit=4096)
    try:
        return dict(json.loads(result.output.splitlines()[0]))
    except (ValueError, IndexError):
        return {"error": f"the verifier's probe failed (exit {result.exit_code}): {result.output.strip()}"}


def _filesystem(path: str) -> dict[str, Any]:
    """The type and size of the filesystem holding `path` (from this namespace's mount table)."""
    best, kind = "", "unknown"
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        point = fields[4]
        if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
            best, kind = point, fields[fields.index("-") + 1]
    stats = os.statvfs(path)
    return {"type": kind, "size_mb": stats.f_blocks * stats.f_frsize // (1024 * 1024)}


def _new_user_namespace() -> str:
    """'allowed', or the errno name a child got for unshare(CLONE_NEWUSER)."""
    libc = ctypes.CDLL(None, use_errno=True)
    pid = os.fork()
    if pid == 0:
        code = 0 if libc.unshare(0x10000000) == 0 else ctypes.get_errno()
        os._exit(min(code, 255))
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return "allowed" if code == 0 else errno.errorcode.get(code, str(code))


def isolation_report(host_port: int | None) -> dict[str, Any]:
    """The server's own view: network, uid, processes, limits, filesystems, filter."""
    workdir = os.environ.get(WORKDIR_ENV_VAR) or os.getcwd()
    return {
        "interfaces": sorted(name for _, name in socket.if_nameindex()),
        "routes": _routes(),
        "host_loopback": _host_loopback(host_port),
        "uid": os.getuid(),
        "host_uid": _host_uid(),
        "visible_pids": sum(1 for p in os.listdir("/proc") if p.isdigit()),
        "hostname": socket.gethostname(),
        "workdir": workdir,
        "rlimits": {name: resource.getrlimit(res)[0] for name, res in _RLIMITS.items()},
        "cgroup_limits": _cgroup_limits(),
        "memory_total_bytes": _memory_total(),
        "new_user_namespace": _new_user_namespace(),
        "filesystems": {"workdir": _filesystem(workdir), "tmp": _filesystem("/tmp")},
        **_status_fields(),
    }


class ProbeEnv(Environment[ProbeAction, ProbeObservation, State]):
    """Reports the sandbox's network, user, filesystem and limits as seen from inside."""

    SUPPORTS_CONCURRENT_SESSIONS = True

    def __init__(self) -> None:
        self._state = State()

    async def reset_async(
        self, seed: int | None = None, episode_id: str | None = None, **kwargs: Any
    ) -> ProbeObservation:
        self._state = State(episode_id=episode_id)
        return ProbeObservation()

    async def step_async(self, action: ProbeAction, timeout_s: float | None = None, **kwargs: Any) -> ProbeObservation:
        self._state.step_count += 1
        return ProbeObservation(report=await self.report(action.host_port, action.host_socket), done=True)

    @property
    def state(self) -> State:
        return self._state

    @tool
    async def report(self, host_port: int | None = None, host_socket: str | None = None) -> dict[str, Any]:
        """The isolation report: the server's view, and the agent's under "agent". `host_port`: a port
        listening on the host's loopback, to try to reach; `host_socket`: a host Unix socket's path, to look for."""
        return {
            **isolation_report(host_port),
            "agent": await agent_report(host_socket),
            "verifier": await verifier_report(),
        }
