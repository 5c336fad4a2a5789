"""A Kubernetes API server for tests: kmock's emulator (real HTTP, objects kept in memory, the
real `kubernetes` client talking to it), plus what a real API server fills in on create and
the validation it makes of a custom object (its pinned upstream CRD's schema, strictly: 422
Invalid otherwise); the Kubernetes version every manifest is validated against."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import kmock
import kubernetes_validate
from kmock._internal.apps import Server
from kmock._internal.k8s import KubernetesError

from tests.providers.kubernetes.crd_schemas import crd_errors, pinned

KUBERNETES_VERSION = "1.33.0"
"""Every manifest is validated (strictly: no unknown field) against this version's schemas."""
NAMESPACE = "sandboxes"

RESOURCES = (
    "v1/pods",
    "v1/secrets",
    "networking.k8s.io/v1/networkpolicies",
    "coordination.k8s.io/v1/leases",
    *(f"extensions.agents.x-k8s.io/v1beta1/{p}" for p in ("sandboxtemplates", "sandboxwarmpools", "sandboxclaims")),
)
"""What the provider makes; the emulator answers 404 for any other."""


@attrs.frozen
class Invalid(KubernetesError):
    """The API server's answer to an object its schema refuses."""

    status: int = 422
    reason: str = "Invalid"
    message: str = ""


class ClusterEmulator(kmock.KubernetesEmulator):
    """Refuses a custom object its pinned CRD refuses, assigns `metadata.uid` and
    `creationTimestamp` on create, as the API server does (owner references name a uid), and
    applies a list's `labelSelector` (equality terms, what the provider sends), which kmock's
    emulator ignores."""

    async def _serve_list(self, request: Any) -> Any:
        listing = await super()._serve_list(request)
        selector = request.params.get("labelSelector", "")
        wanted = dict(term.split("=", 1) for term in selector.split(",") if term)  # a set-based term has no "="
        if any(key.endswith("!") for key in wanted):
            raise ValueError(f"the emulator understands equality selectors only: {selector}")
        labels_of = lambda item: item.get("metadata", {}).get("labels") or {}  # noqa: E731
        listing["items"] = [item for item in listing["items"] if wanted.items() <= labels_of(item).items()]
        return listing

    async def _handle(self, request: Any) -> Any:
        if request.action == kmock.action.CREATE and isinstance(request.data, dict):
            kind = (request.data.get("apiVersion", ""), request.data.get("kind", ""))
            if pinned(*kind) and (errors := crd_errors(request.data)):
                raise Invalid(message=f"{kind[1]} {request.data['metadata'].get('name')} is invalid: {errors}")
            metadata = request.data.setdefault("metadata", {})
            metadata.setdefault("uid", str(uuid.uuid4()))
            metadata.setdefault("creationTimestamp", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        return await super()._handle(request)


@asynccontextmanager
async def cluster() -> AsyncIterator[ClusterEmulator]:
    async with ClusterEmulator() as emulator, Server(emulator):
        for resource in RESOURCES:
            emulator.resources[resource] = {}
        yield emulator


def validate(manifest: dict[str, Any]) -> None:
    """`manifest` as stored: what the API server added on create is not the client's to send."""
    metadata = {k: v for k, v in manifest.get("metadata", {}).items() if k != "creationTimestamp"}
    kubernetes_validate.validate({**manifest, "metadata": metadata}, KUBERNETES_VERSION, strict=True)
