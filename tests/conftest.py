"""Fixtures shared across test packages: local sandboxes under a short root path, and what a test
needs of the machine (root, a Docker engine): skipped on a laptop without it, a failure in CI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from providers.local import LocalProvider


@pytest.fixture
def sandbox_root() -> Iterator[Path]:
    # Short, so Unix socket paths stay under the 108-byte limit.
    root = Path(tempfile.mkdtemp(prefix="hc-", dir="/tmp"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def local_provider(sandbox_root: Path) -> AsyncIterator[LocalProvider]:
    provider = LocalProvider(root=sandbox_root)
    yield provider
    await provider.close()


@pytest.fixture
async def ingress_provider(sandbox_root: Path) -> AsyncIterator[Any]:
    """Local sandboxes reached only through a session-pool-like ingress (tests/ingress.py)."""
    from tests.ingress import IngressProvider, SessionPoolIngress
    from tests.private_ca import PrivateCA

    ca = PrivateCA(sandbox_root)
    ingress = SessionPoolIngress(tls=ca.server_context())
    await ingress.start()
    provider = IngressProvider(LocalProvider(root=sandbox_root / "sandboxes"), ingress, ca.client_context())
    yield provider
    await provider.close()
    await ingress.close()


def _docker_unavailable() -> str | None:
    try:
        import docker

        client = docker.from_env(timeout=10)
        try:
            client.ping()
            client.images.get("hillclimb/sandbox:dev")
        finally:
            client.close()
    except Exception as e:  # any failure means: no usable engine or image here
        return f"{type(e).__name__}: {e}"
    return None


def _unavailable(requirement: str, message: str) -> None:
    """Skip on a laptop; fail where HILLCLIMB_REQUIRE_<REQUIREMENT>=1 says it must run (CI)."""
    if os.environ.get(f"HILLCLIMB_REQUIRE_{requirement.upper()}") == "1":
        pytest.fail(message)
    pytest.skip(message)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("root") is not None and os.geteuid() != 0:
        _unavailable("root", "local sandboxes with per-sandbox uids need root")


@pytest.fixture(scope="session")
def docker_engine() -> None:
    """Docker tests run for real; CI (HILLCLIMB_REQUIRE_DOCKER=1) fails without an engine, a laptop skips."""
    why = _docker_unavailable()
    if why is not None:
        _unavailable(
            "docker",
            f"no Docker engine with the hillclimb/sandbox:dev image ({why}); start dockerd and run "
            "`hillclimb image build`",
        )


@pytest.fixture(scope="session")
def openenv_image(docker_engine: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A sandbox image holding `shoutpkg`, an environment on OpenEnv's own base classes, and OpenEnv
    with it, made as a user makes one: `hillclimb image build --env <project>`. Rebuilt when its
    labels name other code than this checkout's. `shoutpkg` is importable here meanwhile, as a
    user's project is beside the runs that use it (the Docker provider checks the image against it)."""
    import docker
    from envs.digest import IMAGE_LABEL, envs_digest, package_digest, package_label
    from tests.openenv_shout import write_shout_project

    tag = "hillclimb/sandbox:openenv-test"
    project = write_shout_project(tmp_path_factory.mktemp("shoutproj"))
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(project))
        client = docker.from_env()
        try:
            labels = client.images.get(tag).labels or {}
        except docker.errors.ImageNotFound:
            labels = {}
        finally:
            client.close()
        wanted = {IMAGE_LABEL: envs_digest(), package_label("shoutpkg"): package_digest("shoutpkg")}
        if any(labels.get(key) != value for key, value in wanted.items()):
            command = [sys.executable, "-m", "orchestrator", "image", "build", "--env", str(project), "--tag", tag]
            done = subprocess.run(command, capture_output=True, text=True, timeout=1200)
            assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        yield tag
    for name in [m for m in sys.modules if m.split(".")[0] == "shoutpkg"]:
        del sys.modules[name]


@pytest.fixture
async def docker_provider(docker_engine: None, sandbox_root: Path) -> AsyncIterator[Any]:
    from providers.docker import DockerProvider

    provider = DockerProvider(root=sandbox_root)
    yield provider
    await provider.close()


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    """A local Ray for one test module (module scope: test_ray_job's `ray stop` must not kill it)."""
    import ray

    from orchestrator.driver import connect_ray

    connect_ray(None)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def simulated_cluster() -> Iterator[dict[str, str]]:
    """A three-node Ray cluster on this machine (`tests/simulated_cluster.py`): a head with no role
    and two nodes offering the custom resource `learner_node`; yields those two nodes' ids."""
    from tests.simulated_cluster import three_node_cluster

    with three_node_cluster() as (_, role_nodes):
        yield dict.fromkeys(role_nodes, "learner")
