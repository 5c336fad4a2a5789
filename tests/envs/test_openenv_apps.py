"""OpenEnv environments served unchanged: with no type hints (the classes given as options), with
partial hints or generic parameters only, and from the app module OpenEnv environments ship
(`server/app.py` calling `create_app(env, Action, Observation)`), each driven through a whole
episode by OpenEnv's own client. The package is written to a directory of its own, served from
there as a user's project is, without PYTHONPATH."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from openenv.core.generic_client import GenericEnvClient

from envs.authoring import base
from envs.server.env_server import EnvServer
from envs.server.targets import runtime_for
from hillclimb.errors import FactoryError
from tests.openenv_shout import write_shout_project


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A user's project directory holding the `shoutpkg` environment package."""
    write_shout_project(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m.split(".")[0] == "shoutpkg"]:
        del sys.modules[name]


async def _episode(url: str) -> list[str]:
    """A whole episode through OpenEnv's own client; the texts it got back."""
    async with GenericEnvClient(base_url=url, message_timeout_s=5.0) as client:
        await client.reset()
        echoed = []
        for message in ("hi", "there"):
            result = await client.step({"message": message})
            echoed.append(result.observation["echoed"])
        assert result.done
        return echoed


@pytest.fixture
async def serve() -> AsyncIterator[object]:
    servers: list[EnvServer] = []

    async def start(runtime: object) -> str:
        server = EnvServer(runtime, token=None)  # type: ignore[arg-type]
        servers.append(server)
        return f"http://127.0.0.1:{await server.start_tcp()}"

    yield start
    for server in servers:
        await server.close()


async def test_an_env_without_hints_names_the_fix_and_serves_with_its_classes_given(project: Path, serve) -> None:
    with pytest.raises(
        FactoryError, match=r"cannot tell UntypedShout's action type.*--action package.module:ActionClass"
    ):
        runtime_for("shoutpkg.env:UntypedShout")
    runtime = runtime_for(
        "shoutpkg.env:UntypedShout",
        action="shoutpkg.models:ShoutAction",
        observation="shoutpkg.models:ShoutObservation",
    )
    assert await _episode(await serve(runtime)) == ["HI", "THERE"]


@pytest.mark.parametrize("target", ["shoutpkg.env:HalfTyped", "shoutpkg.env:GenericOnly"])
async def test_partial_hints_or_generic_parameters_suffice(project: Path, serve, target: str) -> None:
    runtime = runtime_for(target)
    assert runtime.action_cls.__name__ == "ShoutAction"
    assert await _episode(await serve(runtime)) == ["HI", "THERE"]


async def test_an_openenv_app_module_is_served_as_create_app_was_told(project: Path, serve) -> None:
    runtime = runtime_for("shoutpkg.server.app")
    assert (runtime.env_cls.__name__, runtime.action_cls.__name__, runtime.observation_cls.__name__) == (
        "UntypedShout",
        "ShoutAction",
        "ShoutObservation",
    )
    assert runtime.state_cls is not base.State  # OpenEnv's State, create_app's default
    assert await _episode(await serve(runtime)) == ["HI", "THERE"]
    from openenv.core.env_server import create_app

    assert create_app.__name__ == "create_app"  # OpenEnv's own again after the import


@pytest.mark.parametrize(
    "args",
    [
        ["shoutpkg.server.app"],
        ["shoutpkg.env:UntypedShout", "--action", "shoutpkg.models:ShoutAction"],
    ],
    ids=["app module", "class with --action"],
)
async def test_hillclimb_env_serve_from_the_project_directory(project: Path, args: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # -P, as the `hillclimb` script runs: `python -m` alone would put the directory on sys.path itself.
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-P", "-m", "orchestrator", "env", "serve", *args, "--port", "0", "--no-auth",
        cwd=project, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        seen = ""
        while (match := re.search(r"on ws://127\.0\.0\.1:(\d+)/ws", seen)) is None:
            line = await asyncio.wait_for(child.stdout.readline(), 30)
            assert line, f"the server exited: {seen}"
            seen += line.decode()
        assert await _episode(f"http://127.0.0.1:{match.group(1)}") == ["HI", "THERE"]
    finally:
        child.terminate()
        await child.wait()


async def test_without_the_classes_the_command_names_the_fix(project: Path) -> None:
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "orchestrator", "env", "serve", "shoutpkg.env:UntypedShout", "--no-auth",
        cwd=project, env={**os.environ, "COLUMNS": "300"}, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(child.communicate(), 30)
    assert child.returncode != 0 and "--action package.module:ActionClass" in out.decode(), out.decode()
