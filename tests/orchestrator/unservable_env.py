"""An environment module that cannot be imported inside a sandbox (as a user's package missing
from the sandbox's image, or broken there): every sandbox's server dies as it starts."""

from __future__ import annotations

import os

from tests.orchestrator.faulty_envs import CrashOnStepEnv

if "HILLCLIMB_ENV_SOCKET" in os.environ:  # set for a sandbox's server, never in the test process
    raise ImportError("this environment is broken on purpose inside sandboxes")

UnservableEnv = CrashOnStepEnv
