"""Which runs are alive, on hosts that share a directory: every process that holds a run's
sandboxes beats a heartbeat file (the rules: providers.liveness).

    <home>/runs/<run id>/<host>.<pid>.<n>.beat     flocked while held, touched every interval

A reaper on the same host asks the kernel: it drops a process's flock when the process
dies, SIGKILL included, so a beat file nobody holds is a dead process's. A reaper on
another host (the directory shared between them) cannot see that lock and reads the
file's age instead. A run with no beat here is another machine's, or never started.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import threading
import time
from pathlib import Path

from hillclimb.home import hillclimb_home
from providers.contract import SandboxProvider, host_label
from providers.liveness import RunLiveness, RunState

STALE_AFTER_BEATS = 3
"""A beat from another host older than this many intervals is a dead process's."""


def runs_dir() -> Path:
    return hillclimb_home() / "runs"


class Heartbeat:
    """Held while a process owns sandboxes of `run_id`: `with Heartbeat(run_id): ...`."""

    def __init__(self, run_id: str, interval_s: float = 10.0) -> None:
        self.run_id = run_id
        self.interval_s = interval_s
        self.path = runs_dir() / run_id / f"{host_label()}.{os.getpid()}.{secrets.token_hex(4)}.beat"
        self._fd: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Heartbeat:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)  # a name of its own: nobody else takes it
        os.write(fd, json.dumps({"host": host_label(), "pid": os.getpid(), "interval_s": self.interval_s}).encode())
        self._fd = fd
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{self.run_id}", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            assert self._fd is not None
            os.utime(self._fd)

    def stop(self) -> None:
        if self._fd is None:
            return
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> Heartbeat:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_state(run_id: str, now: float | None = None) -> RunState:
    beats = sorted((runs_dir() / run_id).glob("*.beat"))
    if not beats:
        return RunState.UNKNOWN
    now = time.time() if now is None else now
    return RunState.ALIVE if any(_beating(path, now) for path in beats) else RunState.GONE


def _beating(path: Path, now: float) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:  # its process stopped cleanly just now
        return False
    try:
        info = json.loads(os.read(fd, 4096) or b"{}")
        if info.get("host") == host_label():
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        return now - os.fstat(fd).st_mtime <= STALE_AFTER_BEATS * float(info.get("interval_s", 10.0))
    except ValueError:  # written but not yet filled in: a process starting
        return True
    finally:
        os.close(fd)


def forget_gone(run_id: str) -> None:
    """Remove the beat files of this host's dead processes of `run_id` (after reaping)."""
    for path in (runs_dir() / run_id).glob(f"{host_label()}.*.beat"):
        if not _beating(path, time.time()):
            path.unlink(missing_ok=True)


class HostRunLiveness:
    """The beat files as a `RunLiveness`: what local and Docker sandboxes are reaped by."""

    def beat(self, run_id: str) -> Heartbeat:
        return Heartbeat(run_id).start()

    def state(self, run_id: str) -> RunState:
        return run_state(run_id)

    def forget_gone(self, run_id: str) -> None:
        forget_gone(run_id)


def liveness_for(provider: SandboxProvider) -> RunLiveness:
    """Where `provider`'s runs beat: its own `run_liveness` if it has one, else this host's files."""
    return provider.run_liveness or HostRunLiveness()
