"""The Kubernetes provider against an emulated API server (kmock, over real HTTP, driven by the
real `kubernetes` client): the objects made per sandbox and their fields, destroy, idempotency,
listing by selector, the egress check, and the API's errors as the contract's."""

from __future__ import annotations

import base64
from typing import Any

import kmock
import kubernetes
import pytest

from hillclimb.provider_errors import BadSpecError, FatalProviderError, RetryableProviderError, UnsupportedPolicy
from providers.contract import EgressPolicy, SandboxSpec
from providers.kubernetes.provider import KubernetesProvider
from tests.providers.cli import sandbox_cli
from tests.providers.conformance import (
    check_a_cancelled_create_leaks_nothing,
    check_destroy_twice,
    check_idempotent_create,
    check_labels_and_ttl,
    check_list_by_selector,
)
from tests.providers.kubernetes.emulator import NAMESPACE, ClusterEmulator, validate


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
        validate(manifest)
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


async def test_a_throttled_create_removes_its_pod_even_when_the_delete_is_throttled_too(
    provider: KubernetesProvider, api: ClusterEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by bench/k8s_scale.py under APF-style 429s: the Secret refused, then the cleanup's
    pod delete refused as well, left the pod running until its deadline."""
    api[f"post /api/v1/namespaces/{NAMESPACE}/secrets"] << kmock.Response(
        status=429, headers={"Retry-After": "0"}, payload={"kind": "Status", "message": "throttled"}
    )
    delete, refused = provider._core.delete_namespaced_pod, []

    def throttled_once(*args: Any, **kwargs: Any) -> Any:
        if not refused:
            refused.append(args)
            raise kubernetes.client.ApiException(status=429, reason="Too Many Requests")
        return delete(*args, **kwargs)

    monkeypatch.setattr(provider._core, "delete_namespaced_pod", throttled_once)
    with pytest.raises(RetryableProviderError, match="HTTP 429"):
        await provider.create(SandboxSpec())
    assert refused  # the first delete was refused, and tried again
    pods = kmock.resource("", "v1", "pods")
    assert [key for key, o in api.objects.items() if key[0] == pods and not o.deleted] == []


async def test_the_sandbox_commands_reach_the_cluster_with_provider_options(provider: KubernetesProvider, api) -> None:
    sandbox = await provider.create(SandboxSpec(run_id="cli-run"))
    options = ["-p", "kubernetes", "-o", f"api_url={str(api.url).rstrip('/')}", "-o", f"namespace={NAMESPACE}"]
    code, out = await sandbox_cli("ls", *options)
    assert code == 0 and sandbox.id in out and "cli-run" in out and "1 sandbox(es) on kubernetes" in out
    assert "websocket" in out  # the transport column
    code, out = await sandbox_cli("rm", sandbox.id, *options)
    assert code == 0 and f"destroyed {sandbox.id}" in out
    assert await provider.list() == []


async def test_the_sandbox_commands_name_a_bad_option_or_missing_credentials() -> None:
    code, out = await sandbox_cli("ls", "-p", "kubernetes", "-o", "namspace=agents")
    assert code == 2 and "bad option for provider 'kubernetes': namspace: Extra inputs are not permitted" in out
    code, out = await sandbox_cli("ls", "-p", "kubernetes", "-o", "kubeconfig=/nonexistent/config")
    assert code == 2 and "no Kubernetes credentials" in out


@pytest.mark.parametrize(
    "check",
    [
        check_idempotent_create,
        check_destroy_twice,
        check_list_by_selector,
        check_labels_and_ttl,
        check_a_cancelled_create_leaks_nothing,
    ],
    ids=lambda check: check.__name__.removeprefix("check_"),
)
async def test_the_conformance_checks_that_need_no_kubelet(provider: KubernetesProvider, check: Any) -> None:
    """The kit's checks that do not wait for a pod to run (no kubelet here)."""
    await check(provider)
