"""A benchmark's own processes: which pids they are, their memory and their CPU time.

Summing every process on the host counts whatever else runs beside the benchmark (it read
-0.23 to +0.80 MiB per live session on a shared host); these helpers name the processes
instead: a process and its descendants (a local sandbox's tree under the provider's fork
server, a worker process), and a Docker container's processes with the shim that runs them.
PSS splits each shared page among the processes that map it, so summing it over a set of
processes counts every page they hold once, whoever else shares it. A growth is taken in
private pages (USS) instead: PSS would also move as unrelated processes map the same libraries.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable

__all__ = ["container_pids", "cpu_s", "descendants", "host_cpu_s", "parent", "pss_kib", "uss_kib"]

_TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def _rollup_kib(pid: int, fields: tuple[str, ...]) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return sum(int(line.split()[1]) for line in f if line.startswith(fields))
    except OSError:  # gone since it was listed, or a kernel thread
        return 0


def pss_kib(pids: Iterable[int]) -> int:
    """PSS of these processes together, in KiB."""
    return sum(_rollup_kib(pid, ("Pss:",)) for pid in set(pids))


def uss_kib(pids: Iterable[int]) -> int:
    """Pages only these processes map (each its own), in KiB. Its growth is what a process added:
    PSS's growth also moves whenever another process starts or stops sharing a library's pages."""
    return sum(_rollup_kib(pid, ("Private_Clean:", "Private_Dirty:")) for pid in set(pids))


def _stat(pid: int | str) -> list[str] | None:
    """/proc/<pid>/stat's fields from the state on: state [0], ppid [1], utime [11], stime [12],
    and the reaped children's cutime [13], cstime [14]."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:  # gone since it was listed
        return None
    # the command name may hold spaces and parentheses: the fields start after the last ')'
    return stat[stat.rindex(")") + 2 :].split()


def cpu_s(pids: Iterable[int]) -> float:
    """User and system CPU time these processes, and the children they have reaped, have used so
    far, in seconds. The children count because a sandbox's work is partly processes that live
    for one step (each command an agent runs), gone before anyone could list them; a difference
    of two readings is exact as long as the listed processes themselves live through it."""
    fields = [_stat(pid) for pid in set(pids)]
    return sum(sum(int(x) for x in f[11:15]) for f in fields if f) * _TICK_S


def host_cpu_s() -> tuple[float, float]:
    """(busy, all) CPU seconds the host's CPUs have spent since boot, summed over them: set
    beside `cpu_s`, the difference of two readings says what share of the host the run had and
    how much went to everything else."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    idle = ticks[3] + ticks[4]
    return (sum(ticks) - idle) * _TICK_S, sum(ticks) * _TICK_S


def parent(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[1]) if fields else None


def _parents() -> dict[int, int]:
    """pid → parent pid of every process on the host."""
    fields = {int(entry): _stat(entry) for entry in os.listdir("/proc") if entry.isdigit()}
    return {pid: int(f[1]) for pid, f in fields.items() if f}


def descendants(roots: Iterable[int], *, exclude: Iterable[int] = ()) -> set[int]:
    """`roots` and every process below them, less the subtrees under `exclude`."""
    children: dict[int, list[int]] = {}
    for pid, parent in _parents().items():
        children.setdefault(parent, []).append(pid)
    skip = set(exclude)
    found: set[int] = set()
    stack = [pid for pid in roots if pid not in skip]
    while stack:
        pid = stack.pop()
        if pid in found:
            continue
        found.add(pid)
        stack.extend(child for child in children.get(pid, ()) if child not in skip)
    return found


def container_pids(container_ids: list[str]) -> set[int]:
    """Each container's processes and the shim that runs it (one shim per container under Docker)."""
    if not container_ids:
        return set()
    out = subprocess.run(
        ["docker", "inspect", "-f", "{{.State.Pid}}", *container_ids], capture_output=True, text=True, check=True
    ).stdout
    inits = [int(pid) for pid in out.split() if pid != "0"]
    parents = _parents()
    return descendants(parents[pid] for pid in inits if pid in parents)
