"""An environment written on OpenEnv's own base classes, in a Docker sandbox from an image that
`hillclimb image build --env` made of its project (OpenEnv inside): "any OpenEnv environment runs
unchanged" holds in a container too. Importing OpenEnv reads `.env` from the working directory
(pydantic-settings, through fastmcp), so a server started in the agent's directory, which it may
not read, died at import; the server now works in a directory of its own."""

from __future__ import annotations

from pathlib import Path

import pytest

import docker
from providers.contract import SandboxSpec
from providers.docker import NAME_PREFIX, SOCKET_DIR, DockerProvider

pytestmark = pytest.mark.docker


@pytest.mark.parametrize("target", ["shoutpkg.server.app", "shoutpkg.env:HalfTyped"], ids=["app module", "class"])
async def test_an_openenv_environment_plays_an_episode_in_a_docker_sandbox(
    openenv_image: str, sandbox_root: Path, target: str
) -> None:
    provider = DockerProvider(root=sandbox_root, image=openenv_image)
    try:
        sandbox = await provider.create(SandboxSpec(env=target))
        await provider.wait_ready(sandbox, timeout_s=120)
        async with sandbox.handle.client() as env:
            await env.reset(seed=0)
            steps = [await env.step({"message": message}) for message in ("hi", "there")]
        assert [s.observation["echoed"] for s in steps] == ["HI", "THERE"] and steps[-1].done
        client = docker.from_env()
        try:
            assert client.containers.get(NAME_PREFIX + sandbox.id).attrs["Config"]["WorkingDir"] == SOCKET_DIR
        finally:
            client.close()
    finally:
        await provider.close()
