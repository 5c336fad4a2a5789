"""The Helm chart, rendered by Helm's own engine (helm-python-sdk: Helm's Go library, no binary):
every document a valid Kubernetes object, the sandbox namespace restricted and egress-denied by
the very policy the provider checks for, RBAC exactly what the provider calls (measured against
the emulated API server), and values held to a schema generated from the pydantic models."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from orchestrator.reaper import reap
from providers.base import EgressPolicy, SandboxSpec
from providers.kubernetes.chart_values import values_schema
from providers.kubernetes.egress import default_deny, egress_findings
from providers.kubernetes.provider import SERVICE, KubernetesProvider
from tests.providers.kubernetes.emulator import cluster, validate

CHART = Path(__file__).resolve().parents[3] / "helm" / "hillclimb"
RELEASE_NAMESPACE = "hillclimb"


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    with helm.Chart.load(str(CHART)) as chart:
        files = chart.render(values=values or {}, name="hc", namespace=RELEASE_NAMESPACE)
    return [doc for name, text in files.items() if name.endswith(".yaml") for doc in yaml.safe_load_all(text) if doc]


def _one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind]
    return found


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return render()


VALUES_FILES = sorted((CHART / "ci").glob("*.yaml"))
KINDS = {"Namespace", "NetworkPolicy", "Service", "ServiceAccount", "Role", "RoleBinding"}


@pytest.mark.parametrize("values_file", [None, *VALUES_FILES], ids=lambda p: p.name if p else "defaults")
def test_every_document_is_a_valid_kubernetes_object(values_file: Path | None) -> None:
    """For the default values and every values file under helm/hillclimb/ci/."""
    docs = render(yaml.safe_load(values_file.read_text()) if values_file else None)
    assert {d["kind"] for d in docs} == KINDS
    for doc in docs:
        validate(doc)
    assert _one(docs, "NetworkPolicy") == default_deny(_one(docs, "Namespace")["metadata"]["name"])


def test_the_sandbox_namespace_is_restricted_and_denies_egress_as_the_provider_checks(docs) -> None:
    namespace = _one(docs, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    policy = _one(docs, "NetworkPolicy")
    assert policy == default_deny(namespace["metadata"]["name"])  # one policy, two places
    assert egress_findings([policy]) == []
    service = _one(docs, "Service")
    assert (service["metadata"]["name"], service["spec"]["clusterIP"]) == (SERVICE, "None")


def test_values_move_everything_to_the_named_namespace() -> None:
    docs = render({"sandboxes": {"namespace": "agents"}, "serviceAccount": {"name": "rollouts"}})
    sandbox_side = [d for d in docs if d["kind"] in ("NetworkPolicy", "Service", "Role", "RoleBinding")]
    assert {d["metadata"]["namespace"] for d in sandbox_side} == {"agents"}
    assert _one(docs, "RoleBinding")["subjects"] == [
        {"kind": "ServiceAccount", "name": "rollouts", "namespace": RELEASE_NAMESPACE}
    ]


@pytest.mark.parametrize(
    ("values", "words"),
    [
        ({"sandboxes": {"namespace": "Not_A_Label"}}, "/sandboxes/namespace"),
        ({"sandbox": {"namespace": "x"}}, "additional properties 'sandbox' not allowed"),
    ],
)
def test_a_bad_value_is_rejected_by_the_schema(values: dict[str, Any], words: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=words):
        render(values)


def test_the_schema_file_is_the_models(tmp_path: Path) -> None:
    on_disk = json.loads((CHART / "values.schema.json").read_text())
    assert on_disk == values_schema(), (
        "regenerate: python -m providers.kubernetes.chart_values > helm/hillclimb/values.schema.json"
    )


def _granted(role: dict[str, Any]) -> set[tuple[str, str]]:
    assert all("*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"] for rule in role["rules"])
    return {(verb, resource) for rule in role["rules"] for resource in rule["resources"] for verb in rule["verbs"]}


def _used(request: Any) -> tuple[str, str]:
    """(verb, resource) of one API request, as RBAC names them."""
    method, resource = str(request.method).upper().rsplit(".", 1)[-1], request.resource.plural
    if request.subresource:
        resource = f"{resource}/{request.subresource}"
    verbs = {"POST": "create", "DELETE": "delete", "PATCH": "patch", "PUT": "update"}
    return verbs.get(method) or ("get" if request.name else "list"), resource


async def test_rbac_grants_exactly_what_the_provider_uses(docs: list[dict[str, Any]]) -> None:
    granted = _granted(_one(docs, "Role"))
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    async with cluster() as api:
        provider = KubernetesProvider(namespace="hillclimb-sandboxes", api_url=str(api.url).rstrip("/"))
        try:
            install = provider._networking.create_namespaced_network_policy  # the chart's part, not the provider's
            await asyncio.to_thread(install, "hillclimb-sandboxes", default_deny("hillclimb-sandboxes"))
            before = len(list(api))
            allow = EgressPolicy(mode="allow_list", allow=("10.0.0.0/8",))
            spec = SandboxSpec(
                egress=allow, idempotency_key="run/task/0"
            )  # every call it makes: a keyed create reads first
            beat = await asyncio.to_thread(provider.run_liveness.beat, "run")
            sandbox = await provider.create(spec)
            await provider.list()
            await provider.log_tail(sandbox.id)
            await asyncio.to_thread(beat.renew)
            await reap(provider)  # reads the run's liveness
            await provider.destroy(sandbox.id)
            await asyncio.to_thread(beat.stop)
        finally:
            await provider.close()
        used = {_used(request) for request in list(api)[before:] if request.resource is not None}
    assert used <= granted, f"the provider uses {sorted(used - granted)} the chart's Role does not grant"
    assert granted <= used, f"the chart grants {sorted(granted - used)} the provider never uses"
