"""Push a sandbox image to a registry a cluster pulls from, through the Docker engine's API.

    push_image("hillclimb/sandbox:dev", "registry.example:5000/hillclimb-sandbox:v1")
      images.get(source) ─► tag as the ref ─► api.push(repository, tag) ─► streamed progress
                                                                       ─► aux.Digest: sha256:...

A tag names the same image (one id, one config), so the labels `hillclimb image build` wrote
(`org.hillclimb.envs-digest`, one `org.hillclimb.package-digest.*` per environment package)
travel in the pushed config unchanged, and the registry's digest pins exactly that image. The
engine pushes with its user's credentials (`docker login REGISTRY`). Errors come in the stream,
as text; they are sorted into typed ones here: credentials refused, registry unreachable, other.
Part of the Docker backend: the docker SDK is imported here and in `providers.docker` only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import docker.errors
import requests.exceptions
from docker.auth import resolve_repository_name
from docker.utils import parse_repository_tag

import docker
from hillclimb.provider_errors import ImagePushError, LocalImageNotFound, RegistryAuthError, RegistryUnreachableError

__all__ = ["PushedImage", "push_image"]

AUTH_REFUSED = ("no basic auth credentials", "unauthorized", "authentication required", "denied")
"""What an engine's push error says when the registry refused its credentials."""
UNREACHABLE = ("dial tcp", "i/o timeout", "tls handshake timeout", "no such host")
"""...and when it could not reach the registry at all (Go's dial and timeout errors)."""
LABEL_PREFIX = "org.hillclimb."


@dataclass(frozen=True)
class PushedImage:
    repository: str
    """As pushed, registry included: `registry.example:5000/hillclimb-sandbox`."""
    tag: str
    digest: str
    """The registry's digest of the pushed manifest: `sha256:...`."""
    labels: dict[str, str]
    """The image's `org.hillclimb.*` labels, as pushed."""

    @property
    def pinned(self) -> str:
        """`repository@digest`: this exact image, whatever the tag later names."""
        return f"{self.repository}@{self.digest}"


def push_image(source: str, ref: str, *, progress: Callable[[str], None] = lambda line: None) -> PushedImage:
    """Tag the local image `source` as `ref` (`REGISTRY/REPOSITORY[:TAG]`, tag `latest` if none)
    and push it; `progress` gets one line per layer pushed."""
    if "@" in ref:
        raise ImagePushError(f"push {ref}: give a tag, not a digest (the registry gives the digest)", ref=ref)
    repository, tag = parse_repository_tag(ref)
    tag = tag or "latest"
    try:
        registry = resolve_repository_name(repository)[0]
    except docker.errors.InvalidRepository as e:
        raise ImagePushError(f"push {ref}: not an image reference ({e})", ref=ref) from e
    target = f"{repository}:{tag}"
    try:
        client = docker.from_env(timeout=600)  # a read may wait while a large layer uploads
        try:
            image = client.images.get(source)
        except docker.errors.ImageNotFound as e:
            raise LocalImageNotFound(
                f"no image {source} in the local Docker engine: build it with `hillclimb image build --tag {source}`",
                ref=target,
                registry=registry,
            ) from e
        image.tag(repository, tag)
        digest = None
        for event in client.api.push(repository, tag, stream=True, decode=True):
            if "error" in event:
                raise _push_error(str(event["error"]), target, registry)
            digest = (event.get("aux") or {}).get("Digest", digest)
            status = str(event.get("status", ""))
            if status in ("Pushed", "Layer already exists") or status.startswith("Mounted from"):
                progress(f"  layer {event.get('id', '?')}: {status[0].lower()}{status[1:]}")
    except (docker.errors.DockerException, requests.exceptions.ConnectionError) as e:
        detail = str(getattr(e, "explanation", None) or e)[:500]
        raise ImagePushError(f"push {target}: the Docker engine failed: {detail}", ref=target, registry=registry) from e
    if digest is None:
        raise ImagePushError(f"push {target}: the engine reported no digest", ref=target, registry=registry)
    labels = {key: value for key, value in (image.labels or {}).items() if key.startswith(LABEL_PREFIX)}
    return PushedImage(repository=repository, tag=tag, digest=digest, labels=labels)


def _push_error(message: str, target: str, registry: str) -> ImagePushError:
    """An engine's push error (text in its stream) as a typed error, saying what to do."""
    lowered = message.lower()
    if any(mark in lowered for mark in AUTH_REFUSED):
        return RegistryAuthError(
            f"the registry {registry} refused to take {target}: {message}; log the engine in with"
            f" `docker login {registry}` as a user allowed to push there",
            ref=target,
            registry=registry,
        )
    if any(mark in lowered for mark in UNREACHABLE):
        return RegistryUnreachableError(
            f"the Docker engine cannot reach the registry {registry} to push {target}: {message}; check the"
            " registry's address and that it is up",
            ref=target,
            registry=registry,
        )
    return ImagePushError(f"push {target} failed: {message}", ref=target, registry=registry)
