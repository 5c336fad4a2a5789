"""The custom resources the chart renders and the provider makes, validated against the pinned
upstream CRD schemas (tests/providers/kubernetes/crd_schemas.py: KubeRay v1.4.2, agent-sandbox
v0.5.6, prometheus-operator v0.93.0) as an API server with strict field validation would, their
metadata held to the ObjectMeta fields they use, and each pod template in them also validated
as a core PodTemplate of the Kubernetes version every manifest is checked against."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, StrictStr

from tests.providers.kubernetes.crd_schemas import crd_errors
from tests.providers.kubernetes.emulator import validate

AGENT_SANDBOX = "extensions.agents.x-k8s.io/v1beta1"
CUSTOM_KINDS = {
    ("ray.io/v1", "RayCluster"),
    ("ray.io/v1", "RayJob"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    (AGENT_SANDBOX, "SandboxTemplate"),
    (AGENT_SANDBOX, "SandboxWarmPool"),
    (AGENT_SANDBOX, "SandboxClaim"),
}


class _Metadata(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    name: StrictStr
    namespace: StrictStr
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}


def _pod_templates(doc: dict[str, Any]) -> list[dict[str, Any]]:
    if doc["kind"] == "SandboxTemplate":
        return [doc["spec"]["podTemplate"]]
    if doc["kind"] in ("RayCluster", "RayJob"):
        submitter = doc["spec"].get("submitterPodTemplate")
        return [g["template"] for g in ray_groups(doc).values()] + ([submitter] if submitter else [])
    return []


def validate_custom(doc: dict[str, Any]) -> None:
    """Raise if the pinned upstream CRD refuses `doc`, or Kubernetes would refuse a pod template in it."""
    assert (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS, doc["kind"]
    errors = crd_errors(doc)
    assert not errors, f"{doc['kind']} {doc['metadata'].get('name')}: {errors}"
    _Metadata.model_validate({k: v for k, v in doc["metadata"].items() if k not in ("uid", "creationTimestamp")})
    for template in _pod_templates(doc):
        validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template})


def ray_groups(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A RayCluster's or RayJob's groups by name ('head' for the head group)."""
    cluster = doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]
    return {"head": cluster["headGroupSpec"], **{g["groupName"]: g for g in cluster["workerGroupSpecs"]}}
