"""Sandboxes claimed from an agent-sandbox warm pool, against the emulated API server and the
claim controller's part played as the real one plays it (tests/providers/kubernetes/agent_sandbox.py):
a claim it would refuse is refused here too."""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator
from typing import Any

import kmock
import pytest

from hillclimb.provider_errors import BadSpecError, UnsupportedPolicy
from providers.contract import LABEL_RUN, EgressPolicy, SandboxSpec
from providers.kubernetes import warm_pool
from providers.kubernetes.provider import KubernetesProvider
from providers.kubernetes.warm_pool import GROUP, VERSION
from tests.providers.kubernetes.agent_sandbox import Controller, claim_metadata_error
from tests.providers.kubernetes.custom_resources import validate_custom
from tests.providers.kubernetes.emulator import ClusterEmulator
from tests.providers.kubernetes.test_kubernetes_pod import restricted_violations


def _stored(api: ClusterEmulator, plural: str) -> dict[str, dict[str, Any]]:
    resource = kmock.resource(GROUP, VERSION, plural)
    return {key[2]: dict(obj.raw) for key, obj in api.objects.items() if key[0] == resource and not obj.deleted}


@pytest.fixture
async def warm(api: ClusterEmulator, provider: KubernetesProvider) -> AsyncIterator[KubernetesProvider]:
    provider.warm_pool = 3
    yield provider


async def test_a_claimed_sandbox_serves_its_claimants_episode(warm: KubernetesProvider, api: ClusterEmulator) -> None:
    async with Controller(api):
        sandbox = await warm.create(SandboxSpec(env="toy_terminal", run_id="r1", ttl_s=600))
        await warm.wait_ready(sandbox)
        async with sandbox.handle.client() as env:
            await env.reset()
            assert "app.log" in str((await env.step({"command": "ls"})).observation)
        second = await warm.create(SandboxSpec(env="toy_terminal", run_id="r1", ttl_s=600))
        templates, pools, claims = (_stored(api, p) for p in ("sandboxtemplates", "sandboxwarmpools", "sandboxclaims"))
        assert len(templates) == len(pools) == 1 and set(claims) == {sandbox.id, second.id}  # one pool, made once
        for doc in [*templates.values(), *pools.values(), *claims.values()]:
            validate_custom(doc)
        (template,) = templates.values()
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "p"},
            "spec": template["spec"]["podTemplate"]["spec"],
        }
        assert restricted_violations(pod) == []
        server_args = pod["spec"]["containers"][0]["args"]
        assert "--claim-token" in server_args and "--token-file" not in server_args
        assert template["spec"]["networkPolicyManagement"] == "Unmanaged"  # the chart's default deny holds
        claim = claims[sandbox.id]
        assert claim["spec"]["warmPoolRef"]["name"] == template["metadata"]["name"]
        shutdown = datetime.datetime.fromisoformat(claim["spec"]["lifecycle"]["shutdownTime"].replace("Z", "+00:00"))
        assert 590 <= (shutdown - datetime.datetime.now(datetime.UTC)).total_seconds() <= 600
        assert claim["metadata"]["labels"][LABEL_RUN] == "r1"  # on the claim, listed by it
        assert "additionalPodMetadata" not in claim["spec"] and claim_metadata_error(claim) is None
        assert sandbox.secret() not in str(claims)
        assert {s.id for s in await warm.list({"hillclimb.dev/run-id": "r1"})} == {sandbox.id, second.id}
        await warm.destroy(sandbox.id)
        await warm.destroy(sandbox.id)  # a no-op the second time
        assert set(_stored(api, "sandboxclaims")) == {second.id}


async def test_a_pool_serving_another_environment_is_refused(warm: KubernetesProvider, api: ClusterEmulator) -> None:
    async with Controller(api, env="probe"):
        with pytest.raises(BadSpecError, match="serves envs.builtin.probe"):
            await warm.create(SandboxSpec(env="toy_terminal"))
    assert _stored(api, "sandboxclaims") == {}  # the claim went with the refusal


async def test_an_allow_list_is_refused_for_pods_made_before_the_spec(warm: KubernetesProvider) -> None:
    with pytest.raises(UnsupportedPolicy, match="started before any spec names its allow-list"):
        await warm.create(SandboxSpec(egress=EgressPolicy(mode="allow_list", allow=("10.0.0.0/8",))))


@pytest.mark.parametrize(
    ("labels", "allowed", "words"),
    [
        ({LABEL_RUN: "r1"}, ("sandbox.users.io",), "label domain 'hillclimb.dev' is not in the allowlist"),
        ({"run-id": "r1"}, ("sandbox.users.io",), "must have a domain prefix"),
        ({"sandbox.users.io/run-id": "not a value"}, ("sandbox.users.io",), "invalid label value"),
        ({"app": "sandbox-router"}, ("sandbox.users.io",), "restricted system label value"),
    ],
)
def test_the_controllers_label_rule_as_upstream_states_it(
    labels: dict[str, str], allowed: tuple[str, ...], words: str
) -> None:
    claim = {"spec": {"additionalPodMetadata": {"labels": labels}}}
    assert words in str(claim_metadata_error(claim, allowed))


@pytest.mark.parametrize(
    ("labels", "allowed"),
    [
        ({"sandbox.users.io/run-id": "r1"}, ("sandbox.users.io",)),
        ({"team.sandbox.users.io/run-id": "r1"}, ("sandbox.users.io",)),  # a subdomain of an allowed one
        ({LABEL_RUN: "r1"}, ("hillclimb.dev",)),  # a controller configured to allow it
    ],
)
def test_labels_in_an_allowed_domain_pass(labels: dict[str, str], allowed: tuple[str, ...]) -> None:
    assert claim_metadata_error({"spec": {"additionalPodMetadata": {"labels": labels}}}, allowed) is None


async def test_a_claim_the_controller_refuses_fails_the_create_at_once(
    warm: KubernetesProvider, api: ClusterEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mistake this provider once made: run labels on the bound pod. The default controller
    refuses such a claim; the provider says why from the claim's condition instead of waiting
    out its bind timeout, and deletes the claim."""
    made = warm_pool.sandbox_claim

    def labelling_the_pod(name: str, **kwargs: Any) -> dict[str, Any]:
        claim = made(name, **kwargs)
        claim["spec"]["additionalPodMetadata"] = {"labels": kwargs["labels"]}
        return claim

    monkeypatch.setattr("providers.kubernetes.provider.sandbox_claim", labelling_the_pod)
    async with Controller(api):
        started = datetime.datetime.now(datetime.UTC)
        with pytest.raises(
            BadSpecError, match="InvalidMetadata: .*label domain 'hillclimb.dev' is not in the allowlist"
        ):
            await warm.create(SandboxSpec(env="toy_terminal", run_id="r1"))
        assert (datetime.datetime.now(datetime.UTC) - started).total_seconds() < 5
    assert _stored(api, "sandboxclaims") == {}
