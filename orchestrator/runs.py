"""Which runs are alive: each driver holds an exclusive lock on its run's lock file.

The kernel drops an flock when its process dies, SIGKILL included, so "the file
exists and nobody holds its lock" means the run is gone, and its sandboxes are
orphans a reaper may destroy. A run with no lock file on this host is unknown here
(another machine's, or never started): only its time-to-live applies.
"""

from __future__ import annotations

import fcntl
import os
from enum import StrEnum
from pathlib import Path

from envs.errors import HillclimbError


class RunState(StrEnum):
    ALIVE = "alive"
    GONE = "gone"
    UNKNOWN = "unknown"


class RunActiveError(HillclimbError, RuntimeError):
    """Another live process already holds this run id."""


def hillclimb_home() -> Path:
    return Path(os.environ.get("HILLCLIMB_HOME") or Path.home() / ".cache" / "hillclimb")


def runs_dir() -> Path:
    path = hillclimb_home() / "runs"
    path.mkdir(parents=True, exist_ok=True)
    return path


class RunLock:
    """Held for a driver's whole life: `with RunLock(run_id): ...`."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.path = runs_dir() / f"{run_id}.lock"
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunActiveError(
                f"run {self.run_id!r} is already running on this host (lock {self.path}); pick another run id"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def run_state(run_id: str) -> RunState:
    path = runs_dir() / f"{run_id}.lock"
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return RunState.UNKNOWN
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return RunState.ALIVE
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return RunState.GONE
    finally:
        os.close(fd)
