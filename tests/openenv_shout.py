"""`shoutpkg`: an environment written on OpenEnv's own base classes (no hillclimb import), as a
user's project directory: its models, an environment class with no type hints and two with some,
and the app module OpenEnv environments ship (`server/app.py` calling `create_app`). Served in
process (tests/envs/test_openenv_apps.py), and in sandboxes from an image `hillclimb image build
--env` made of it (the `openenv_image` fixture)."""

from __future__ import annotations

import textwrap
from pathlib import Path

PYPROJECT = """
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "shoutpkg"
version = "0.1.0"
dependencies = ["openenv>=0.10"]

[tool.setuptools.packages.find]
include = ["shoutpkg*"]
"""
MODELS = """
from openenv.core.env_server.types import Action, Observation

class ShoutAction(Action):
    message: str

class ShoutObservation(Observation):
    echoed: str = ""
"""
ENV = """
from openenv.core.env_server.interfaces import Environment
from openenv.core.env_server.types import State
from shoutpkg.models import ShoutAction, ShoutObservation

class UntypedShout(Environment):
    '''No hints, no generic parameters: OpenEnv is told the classes by create_app.'''

    def __init__(self):
        super().__init__()
        self._state = State()

    def reset(self, seed=None, episode_id=None, **kwargs):
        self._state = State(episode_id=episode_id or "e", step_count=0)
        return ShoutObservation()

    def step(self, action, timeout_s=None, **kwargs):
        self._state.step_count += 1
        return ShoutObservation(echoed=action.message.upper(), reward=1.0, done=self._state.step_count >= 2)

    @property
    def state(self):
        return self._state

class HalfTyped(UntypedShout):
    def step(self, action: ShoutAction, timeout_s=None, **kwargs):
        return super().step(action)

class GenericOnly(UntypedShout, Environment[ShoutAction, ShoutObservation, State]):
    pass
"""
APP = """
from openenv.core.env_server import create_app
from shoutpkg.env import UntypedShout
from shoutpkg.models import ShoutAction, ShoutObservation

app = create_app(UntypedShout, ShoutAction, ShoutObservation, env_name="shout")
"""


def write_shout_project(root: Path) -> Path:
    """The project's files under `root` (a pyproject.toml beside the package); `root` back."""
    for relative, text in {
        "pyproject.toml": PYPROJECT,
        "shoutpkg/__init__.py": "",
        "shoutpkg/models.py": MODELS,
        "shoutpkg/env.py": ENV,
        "shoutpkg/server/__init__.py": "",
        "shoutpkg/server/app.py": APP,
    }.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(textwrap.dedent(text))
    return root
