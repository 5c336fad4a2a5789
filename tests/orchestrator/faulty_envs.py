"""Environments that fail on purpose, for the rollout fault tests (they run inside sandboxes)."""

from __future__ import annotations

import os
import sys
from typing import Any

from envs.authoring.base import Action, Environment, Observation, State


class CommandAction(Action):
    command: str


class OutputObservation(Observation):
    output: str = ""
    prompt: str = ""


class CrashOnStepEnv(Environment[CommandAction, OutputObservation, State]):
    """Resets fine, then the whole sandbox dies on the first step."""

    SUPPORTS_CONCURRENT_SESSIONS = True

    def __init__(self) -> None:
        self._state = State()

    async def reset_async(
        self, seed: int | None = None, episode_id: str | None = None, **kwargs: Any
    ) -> OutputObservation:
        return OutputObservation(prompt="doomed")

    async def step_async(
        self, action: CommandAction, timeout_s: float | None = None, **kwargs: Any
    ) -> OutputObservation:
        print("CrashOnStepEnv: exiting on purpose", file=sys.stderr, flush=True)
        os._exit(1)

    @property
    def state(self) -> State:
        return self._state


class RaiseOnStepEnv(CrashOnStepEnv):
    """Resets fine, then raises in every step: the server reports EXECUTION_ERROR and lives on."""

    async def step_async(
        self, action: CommandAction, timeout_s: float | None = None, **kwargs: Any
    ) -> OutputObservation:
        raise RuntimeError("the verifier's disk is full (on purpose)")
