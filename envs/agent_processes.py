"""The agent's commands' processes, seen from the process that starts them (the warden).

Orphans: a command killed with its process group can still leave a process behind: one
that called `setsid` (or daemonized) is in a group of its own. When its parent dies, the
kernel hands such an orphan to the nearest ancestor marked as a child subreaper (or to
PID 1), so the warden marks itself (`adopt_orphans`) and, after each command, kills what
it adopted since that command began (`kill_adopted`).

Memory: where the agent's commands share the env server's uid (an ordinary user's local
sandbox, or a server outside any sandbox), they could ptrace the server or read its /proc
files; `keep_memory_private`, applied before the first command starts
(`envs.agent_commands`), stops that, the reward being computed in the server's memory.
With a uid of their own they cannot, and the server stays dumpable.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

_PR_SET_DUMPABLE = 4
_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37
_SWEEPS = 64  # a stray killed hands its own children to us: sweep until none is left


_libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def _prctl(option: int, arg: object) -> int:
    assert _libc is not None
    return int(_libc.prctl(option, arg, 0, 0, 0))


def adopt_orphans() -> None:
    """Make this process the reaper of its descendants' orphans (Linux only)."""
    if sys.platform == "linux":
        _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def keep_memory_private() -> None:
    """Make this process non-dumpable: processes of its own uid (the agent's commands, in a
    sandbox) can then neither ptrace it nor open its /proc files (mem, environ, fds). A child
    it executes is dumpable again, as usual."""
    if sys.platform == "linux":
        _prctl(_PR_SET_DUMPABLE, 0)


def adopting() -> bool:
    if sys.platform != "linux":
        return False
    flag = ctypes.c_int(0)
    return _prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(flag)) == 0 and flag.value != 0


def start_ticks(pid: int) -> int | None:
    """When `pid` started, in clock ticks since boot (None if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def exited_children() -> Iterator[tuple[int, int]]:
    """Reap, without blocking, every child that has exited: (pid, wait status) of each."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        yield pid, status


def _children_since(ticks: int) -> list[int]:
    me, found = os.getpid(), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me and int(fields[19]) >= ticks:
            found.append(int(stat.parent.name))
    return found


def kill_adopted(since_ticks: int, keep: set[int]) -> int:
    """Kill (and reap) every child this process adopted that started at or after
    `since_ticks`, except `keep` (commands still running); the number killed."""
    if not adopting():
        return 0
    killed = 0
    for _ in range(_SWEEPS):
        strays = [pid for pid in _children_since(since_ticks) if pid not in keep]
        if not strays:
            break
        for pid in strays:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            killed += 1
    return killed
