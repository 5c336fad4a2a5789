"""The Kubernetes provider against an emulated API server (kmock, over real HTTP, driven by the
real `kubernetes` client): the objects made per sandbox and their fields, destroy, idempotency,
listing by selector, the egress check, and the API's errors as the contract's."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import kmock
import kubernetes_validate
import pytest

from providers.base import EgressPolicy, SandboxSpec
from providers.errors import BadSpecError, FatalProviderError, RetryableProviderError, UnsupportedPolicy
from providers.kubernetes.egress import default_deny
from providers.kubernetes.provider import KubernetesProvider
from tests.kube_emulator import ClusterEmulator, cluster

NAMESPACE = "sandboxes"
KUBERNETES_VERSION = "1.33.0"


@pytest.fixture
async def api() -> AsyncIterator[ClusterEmulator]:
    async with cluster() as emulator:
        yield emulator


@pytest.fixture
async def provider(api: ClusterEmulator) -> AsyncIterator[KubernetesProvider]:
    made = KubernetesProvider(namespace=NAMESPACE, api_url=str(api.url).rstrip("/"))
    await _install_default_deny(made)
    yield made
    await made.close()


async def _install_default_deny(provider: KubernetesProvider) -> None:
    create = provider._networking.create_namespaced_network_policy
    await asyncio.to_thread(create, NAMESPACE, default_deny(NAMESPACE))


def _stored(api: ClusterEmulator, plural: str, name: str) -> dict[str, Any] | None:
    group = "networking.k8s.io/v1" if plural == "networkpolicies" else "v1"
    resource = kmock.resource(group.rsplit("/", 1)[0] if "/" in group else "", group.rsplit("/", 1)[-1], plural)
    key = (resource, NAMESPACE, name)
    if key not in api.objects or api.objects[key].deleted:
        return None
    return dict(api.objects[key].raw)


async def test_a_sandbox_is_a_valid_pod_and_secret_owned_by_it(provider: KubernetesProvider, api) -> None:
    sandbox = await provider.create(SandboxSpec(env="terminal", run_id="r1", labels={"team": "blue"}))
    pod = _stored(api, "pods", sandbox.id)
    secret = _stored(api, "secrets", f"{sandbox.id}-token")
    assert pod is not None and secret is not None
    for manifest in (pod, secret):
        stripped = {**manifest, "metadata": {k: v for k, v in manifest["metadata"].items() if k != "creationTimestamp"}}
        kubernetes_validate.validate(stripped, KUBERNETES_VERSION, strict=True)
    assert secret["metadata"]["ownerReferences"][0]["uid"] == pod["metadata"]["uid"]
    assert base64.b64decode(secret["data"]["token"]).decode() == sandbox.secret()
    assert pod["spec"]["hostname"] == sandbox.id and pod["spec"]["subdomain"] == "hillclimb-sandboxes"
    assert sandbox.endpoint == f"ws://{sandbox.id}.hillclimb-sandboxes.{NAMESPACE}.svc:8000/ws"
    assert sandbox.labels["team"] == "blue" and sandbox.run_id == "r1"
    assert sandbox.secret() not in str(pod) and sandbox.secret() not in repr(sandbox)


async def test_destroy_removes_what_the_sandbox_made_and_is_idempotent(provider: KubernetesProvider, api) -> None:
    spec = SandboxSpec(egress=EgressPolicy(mode="allow_list", allow=("10.0.0.0/8",)))
    sandbox = await provider.create(spec)
    assert _stored(api, "networkpolicies", f"{sandbox.id}-egress") is not None
    await provider.destroy(sandbox.id)
    await provider.destroy(sandbox.id)  # a no-op the second time
    for plural, name in (
        ("pods", sandbox.id),
        ("secrets", f"{sandbox.id}-token"),
        ("networkpolicies", f"{sandbox.id}-egress"),
    ):
        assert _stored(api, plural, name) is None, plural
    assert await provider.list() == []


async def test_one_pod_per_idempotency_key(provider: KubernetesProvider) -> None:
    spec = SandboxSpec(idempotency_key="run/task-1/attempt-0")
    first, second = await provider.create(spec), await provider.create(spec)
    assert first.id == second.id and len(await provider.list()) == 1


async def test_list_by_selector(provider: KubernetesProvider) -> None:
    ours = await provider.create(SandboxSpec(run_id="a", labels={"team": "blue"}))
    await provider.create(SandboxSpec(run_id="b"))
    assert [s.id for s in await provider.list({"hillclimb.dev/run-id": "a"})] == [ours.id]
    assert [s.id for s in await provider.list({"team": "blue"})] == [ours.id]
    assert len(await provider.list()) == 2


async def test_sandboxes_are_refused_where_egress_is_not_denied(api: ClusterEmulator) -> None:
    bare = KubernetesProvider(namespace=NAMESPACE, api_url=str(api.url).rstrip("/"))
    try:
        with pytest.raises(UnsupportedPolicy, match="does not deny sandbox egress: no NetworkPolicy denies"):
            await bare.create(SandboxSpec())
        assert await bare.list() == []
    finally:
        await bare.close()


async def test_a_host_name_in_the_allow_list_is_refused_before_anything_exists(provider: KubernetesProvider) -> None:
    spec = SandboxSpec(egress=EgressPolicy(mode="allow_list", allow=("pypi.org",)))
    with pytest.raises(UnsupportedPolicy, match="cannot name hosts"):
        await provider.create(spec)
    assert await provider.list() == []


@pytest.mark.parametrize(
    ("status", "headers", "error", "words"),
    [
        (403, {}, FatalProviderError, "forbidden: the service account may not create pods in sandboxes"),
        (422, {}, BadSpecError, "refused the pods object"),
        (429, {"Retry-After": "7"}, RetryableProviderError, "HTTP 429"),
        (500, {}, RetryableProviderError, "HTTP 500"),
    ],
)
async def test_api_errors_become_the_contracts(
    provider: KubernetesProvider, api: ClusterEmulator, status: int, headers: dict[str, str], error: type, words: str
) -> None:
    api[f"post /api/v1/namespaces/{NAMESPACE}/pods"] << kmock.Response(
        status=status, headers=headers, payload={"kind": "Status", "message": "refused here"}
    )
    with pytest.raises(error, match=words) as raised:
        await provider.create(SandboxSpec())
    if status == 429:
        assert raised.value.delay_s == 7.0
