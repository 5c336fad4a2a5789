"""`hillclimb image push` through the real Docker engine to a registry on loopback (tests/providers/fake_registry.py):
what arrives is the image with its labels, under the digest the command prints; a registry that refuses the
engine's credentials, or is not there, is a typed error that says so."""

from __future__ import annotations

import hashlib
import io
import os
import re
import secrets
import socket
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from envs.digest import IMAGE_LABEL
from hillclimb.provider_errors import ImagePushError, LocalImageNotFound, RegistryAuthError, RegistryUnreachableError
from providers.docker_registry import push_image
from tests.providers.fake_registry import FakeRegistry

pytestmark = pytest.mark.docker

REPO = Path(__file__).parents[2]
LABELS = {IMAGE_LABEL: "sha256:" + "ab" * 32, "org.hillclimb.package-digest.my_env": "sha256:" + "cd" * 32}


@pytest.fixture
def image(docker_engine: None) -> Iterator[str]:
    """A labelled image of one small file, built offline (FROM scratch), under a tag of this test's own;
    removed after with every tag it was given (its content is random: no one else's image has its id)."""
    import docker

    dockerfile = "FROM scratch\nCOPY hello /hello\n" + "".join(f"LABEL {k}={v}\n" for k, v in LABELS.items())
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, data in {"Dockerfile": dockerfile.encode(), "hello": secrets.token_bytes(64)}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    tag = f"hillclimb/push-test:{secrets.token_hex(4)}"
    client = docker.from_env()
    built, _ = client.images.build(fileobj=context, custom_context=True, tag=tag, rm=True)
    try:
        yield tag
    finally:
        client.images.remove(built.id, force=True)
        client.close()


def test_the_pushed_image_keeps_its_labels_under_the_printed_digest(image: str) -> None:
    with FakeRegistry() as registry:
        ref = f"{registry.address}/team/hillclimb-sandbox:v1"
        done = subprocess.run(
            [sys.executable, "-m", "orchestrator", "image", "push", ref, "--image", image],
            cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "80"},
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        manifest = registry.manifests[("team/hillclimb-sandbox", "v1")]
        config = registry.image_config("team/hillclimb-sandbox", "v1")
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    assert config["config"]["Labels"] == LABELS  # the build's digests, as pushed
    pinned = f"{registry.address}/team/hillclimb-sandbox@{digest}"
    out = done.stdout
    assert re.search(r"^  layer [0-9a-f]{12}: pushed$", out, re.M), out  # the one layer, uploaded
    assert f"pushed {ref} ({image}), digest {digest}" in out, out
    assert all(f"  label {key}={value}" in out for key, value in LABELS.items())
    assert f"--set sandboxes.image={pinned}\n" in out  # whole, at 80 columns
    assert f"  sandboxes:\n    image: {pinned}\n" in out
    assert f"--set provider.options.image={pinned}" in out


def test_a_registry_that_refuses_the_engines_credentials_says_to_log_in(image: str) -> None:
    with FakeRegistry(refuse_auth=True) as registry:
        with pytest.raises(RegistryAuthError) as info:
            push_image(image, f"{registry.address}/hillclimb-sandbox:v1")
        assert registry.manifests == {}
    assert str(info.value) == (
        f"the registry {registry.address} refused to take {registry.address}/hillclimb-sandbox:v1: no basic auth"
        f" credentials; log the engine in with `docker login {registry.address}` as a user allowed to push there"
    )
    assert isinstance(info.value, PermissionError) and info.value.registry == registry.address


def test_a_registry_that_is_not_there_is_unreachable(image: str) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens on it
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    with pytest.raises(RegistryUnreachableError) as info:
        push_image(image, f"{address}/hillclimb-sandbox:v1")
    message = str(info.value)
    assert message.startswith(f"the Docker engine cannot reach the registry {address} to push {address}/")
    assert "connection refused" in message and isinstance(info.value, ConnectionError)


@pytest.mark.usefixtures("docker_engine")
def test_an_image_not_built_is_named_with_the_command_that_builds_it() -> None:
    missing = f"hillclimb/push-test:never-built-{secrets.token_hex(4)}"
    with pytest.raises(LocalImageNotFound, match=f"no image {missing} .*`hillclimb image build --tag {missing}`"):
        push_image(missing, "127.0.0.1:9/hillclimb-sandbox:v1")


@pytest.mark.parametrize(
    ("ref", "why"),
    [
        ("127.0.0.1:9/hillclimb-sandbox@sha256:" + "0" * 64, "give a tag, not a digest"),
        ("https://registry.example/hillclimb-sandbox:v1", "not an image reference .*cannot contain a scheme"),
    ],
    ids=["digest", "scheme"],
)
def test_a_ref_that_names_no_tag_to_push_is_refused_before_the_engine_is_asked(ref: str, why: str) -> None:
    with pytest.raises(ImagePushError, match=why):
        push_image("hillclimb/sandbox:dev", ref)


def test_a_ref_the_engine_refuses_to_tag_is_an_error_naming_it(image: str) -> None:
    with pytest.raises(ImagePushError, match=r"push 127.0.0.1:9/Upper-Case:v1: the Docker engine failed: .*"):
        push_image(image, "127.0.0.1:9/Upper-Case:v1")
