"""The trivial environment both servers run in `env_step.py`: one class, OpenEnv's own base.

Its async methods are overridden, so OpenEnv's server and ours both await them on the
event loop (no thread hop on either side): the benchmark compares the runtimes, not
the environment.
"""

from __future__ import annotations

from typing import Any

from openenv.core.env_server.interfaces import Environment
from openenv.core.env_server.types import Action, Observation, State


class PingAction(Action):
    n: int = 0


class PingObservation(Observation):
    n: int = 0


class PingEnv(Environment[PingAction, PingObservation, State]):
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

    async def reset_async(
        self, seed: int | None = None, episode_id: str | None = None, **kwargs: Any
    ) -> PingObservation:
        return self.reset(seed=seed, episode_id=episode_id)

    async def step_async(self, action: PingAction, timeout_s: float | None = None, **kwargs: Any) -> PingObservation:  # type: ignore[override]
        return self.step(action)

    @property
    def state(self) -> State:
        return self._state
