"""The trivial environments both servers run in `env_step.py`, on OpenEnv's own base.

`PingEnv` overrides the async methods, so OpenEnv's server and ours both await them on the
event loop (no thread hop on either side): the runtimes compared, not the environment.
`SyncPingEnv` is the same with a synchronous `step` only, as nearly every published OpenEnv
environment is written: each server then decides how to run it (both today: a thread per
session, so the hop to it is in the measurement).
"""

from __future__ import annotations

import time
from typing import Any

from openenv.core.env_server.interfaces import Environment
from openenv.core.env_server.types import Action, Observation, State


class PingAction(Action):
    n: int = 0


class PingObservation(Observation):
    n: int = 0


class SyncPingEnv(Environment[PingAction, PingObservation, State]):
    SUPPORTS_CONCURRENT_SESSIONS = True

    def __init__(self) -> None:
        super().__init__()
        self._state = State()

    def reset(self, seed: int | None = None, episode_id: str | None = None, **kwargs: Any) -> PingObservation:
        self._state = State(episode_id=episode_id)
        return PingObservation(n=0)

    def step(self, action: PingAction, timeout_s: float | None = None, **kwargs: Any) -> PingObservation:  # type: ignore[override]
        self._state.step_count += 1
        return PingObservation(n=action.n, reward=1.0)

    @property
    def state(self) -> State:
        return self._state


class PingEnv(SyncPingEnv):
    async def reset_async(
        self, seed: int | None = None, episode_id: str | None = None, **kwargs: Any
    ) -> PingObservation:
        return self.reset(seed=seed, episode_id=episode_id)

    async def step_async(self, action: PingAction, timeout_s: float | None = None, **kwargs: Any) -> PingObservation:  # type: ignore[override]
        return self.step(action)


class NapAction(Action):
    nap_ms: float = 0.0


class NapEnv(Environment[NapAction, PingObservation, State]):
    """A synchronous step that blocks for `nap_ms` (a subprocess, a slow verifier): for the stall
    it causes other sessions (`bench.step_stall`)."""

    SUPPORTS_CONCURRENT_SESSIONS = True

    def __init__(self) -> None:
        super().__init__()
        self._state = State()

    def reset(self, seed: int | None = None, episode_id: str | None = None, **kwargs: Any) -> PingObservation:
        return PingObservation(n=0)

    def step(self, action: NapAction, timeout_s: float | None = None, **kwargs: Any) -> PingObservation:  # type: ignore[override]
        if action.nap_ms:
            time.sleep(action.nap_ms / 1000)
        return PingObservation(n=0)

    @property
    def state(self) -> State:
        return self._state
