"""An environment whose tools misbehave on purpose, to test that sandbox limits hold."""

from __future__ import annotations

import errno
import os
import time
from typing import Any

from envs.authoring.base import Action, Environment, Observation, State, tool


class LimitsEnv(Environment[Action, Observation, State]):
    """Tools that allocate memory, fork without end, and report who runs them."""

    SUPPORTS_CONCURRENT_SESSIONS = True

    def __init__(self) -> None:
        self._state = State()

    async def reset_async(self, seed: int | None = None, episode_id: str | None = None, **kwargs: Any) -> Observation:
        return Observation()

    async def step_async(self, action: Action, timeout_s: float | None = None, **kwargs: Any) -> Observation:
        return Observation(done=True)

    @property
    def state(self) -> State:
        return self._state

    @tool
    def allocate(self, mb: int) -> str:
        """Allocate and touch `mb` MiB."""
        block = bytearray(mb * 1024 * 1024)
        for i in range(0, len(block), 4096):
            block[i] = 1
        return f"allocated {mb} MiB"

    @tool
    def fork_bomb(self, seconds: float = 20.0) -> dict[str, Any]:
        """Fork sleeping children until the kernel refuses; report how many got through."""
        started = 0
        while started < 100_000:
            try:
                pid = os.fork()
            except OSError as e:
                return {"started": started, "refused": errno.errorcode.get(e.errno or 0, str(e))}
            if pid == 0:
                time.sleep(seconds)
                os._exit(0)
            started += 1
        return {"started": started, "refused": None}

    @tool
    def whoami(self) -> dict[str, int]:
        """The uid and pid the environment runs as."""
        return {"uid": os.getuid(), "pid": os.getpid()}
