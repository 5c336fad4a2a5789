"""Ending every process of a uid, seen from the process that starts them (the warden).

A command's process group is killed when it ends, but what it left can be anywhere: a
`setsid`, a double fork, a chain of each. The kernel knows them all by their uid, so the
warden ends them by uid (`kill_uid`): for the one call, it takes that uid as its effective
id, and `kill(-1, SIGKILL)` reaches exactly the processes that uid may signal. One call
reaches them all, however they forked: the kernel holds fork off while it signals (a fork
under way either completes into the set, or fails). The warden is PID 1 of the sandbox, or a
child subreaper, so each orphan comes back to it to be reaped (`adopt_orphans`).

A warden that runs under the agent's uid itself (a pod's agent container) calls
`kill(-1)` as it is: the kernel spares the caller (`kill_own_uid`). One that shares the env
server's uid (an ordinary user's sandbox, or a server outside any sandbox) cannot: it would
kill the server. It kills every child it adopted instead, level by level until none is left
(`kill_orphans`), a sweep that a process forking as fast as it is killed could outrun, which is
why that setup fails the probe's checks.

Memory: where the agent's commands share the env server's uid they could ptrace the server
or read its /proc files; `keep_memory_private`, applied before the first command starts
(`envs.sandbox.agent_commands`), stops that, the reward being computed in the server's memory.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time
from collections.abc import Iterator
from typing import NamedTuple

_PR_SET_PDEATHSIG, _PR_GET_PDEATHSIG = 1, 2
_PR_SET_DUMPABLE = 4
_PR_SET_CHILD_SUBREAPER = 36
GONE_WAIT_S = 5.0
"""How long a killed process may take to exit (one stuck in the kernel) before we go on without it."""


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


def start_ticks(pid: int) -> int | None:
    """When `pid` started, in clock ticks since boot (None if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
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


def _signal_all() -> None:
    """kill(-1, SIGKILL) with our current ids: every process we may signal in our PID namespace."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(-1, signal.SIGKILL)


def kill_uid(uid: int) -> bool:
    """SIGKILL every process whose real uid is `uid` (we need CAP_SETUID, and run as root); True
    if any was there (running, or a zombie to reap: `wait_gone`).

    When one runs, our effective id becomes `uid` for the one call: a process of `uid` still
    cannot signal us meanwhile (the kernel judges a sender by its target's real and saved ids,
    ours 0), and no fork is needed, which a sandbox at its pids limit could not make. The call
    also reaches processes whose real uid is 0: in a sandbox none but us and PID 1 (spared), as
    long as every child of ours has taken its own uid before we go on (`envs.sandbox.warden` waits for
    each to exec). The kernel clears our parent-death signal on the change: it is set again, and
    if the parent died meanwhile, delivered."""
    found = _live_processes(uid)
    if all(process.zombie for process in found):
        return bool(found)
    death_signal, parent = _parent_death_signal(), os.getppid()
    os.setresuid(-1, uid, -1)
    try:
        _signal_all()
    finally:
        os.setresuid(-1, 0, -1)
        if death_signal:
            _prctl(_PR_SET_PDEATHSIG, death_signal)
            if os.getppid() != parent:
                os.kill(os.getpid(), death_signal)
    return True


def _parent_death_signal() -> int:
    found = ctypes.c_int(0)
    _prctl(_PR_GET_PDEATHSIG, ctypes.byref(found))
    return found.value


def kill_own_uid() -> None:
    """SIGKILL every process of our own uid but us."""
    _signal_all()


class _Process(NamedTuple):
    pid: int
    uid: int
    """Its real uid."""
    zombie: bool
    parent: int


def _processes() -> Iterator[_Process]:
    """Every process in our PID namespace but us, from /proc (one that exits meanwhile is skipped)."""
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            with open(f"/proc/{entry.name}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        uid, state = int(fields["Uid"].split()[0]), fields["State"].strip()
        yield _Process(int(entry.name), uid, state.startswith("Z"), int(fields["PPid"]))


def _live_processes(uid: int) -> list[_Process]:
    """Each process whose real uid is `uid`, but us (zombies included)."""
    return [process for process in _processes() if process.uid == uid]


def wait_gone(uid: int, keep: set[int], timeout_s: float = GONE_WAIT_S) -> list[int]:
    """After a kill: wait until no process of `uid` runs, and reap those of them that were our
    children (but `keep`: commands whose exit the caller reports). The pids still running at
    `timeout_s` (stuck in the kernel), if any."""
    deadline = time.monotonic() + timeout_s
    me = os.getpid()
    while True:
        processes = _live_processes(uid)
        for process in processes:
            if process.zombie and process.parent == me and process.pid not in keep:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(process.pid, 0)
        running = [process.pid for process in processes if not process.zombie]
        if not running or time.monotonic() >= deadline:
            return running
        time.sleep(0.001)


def kill_orphans(keep: set[int], timeout_s: float = GONE_WAIT_S) -> int:
    """Kill and reap every child of ours but `keep`, again as each killed one's children come
    back to us, until none is left or `timeout_s` has passed; the number killed."""
    deadline, killed, me = time.monotonic() + timeout_s, 0, os.getpid()
    while time.monotonic() < deadline:
        strays = [p.pid for p in _processes() if p.parent == me and p.pid not in keep]
        if not strays:
            break
        for pid in strays:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            killed += 1
    return killed
