"""The custom resources the chart renders and the provider makes, checked as kubernetes-validate
checks built-in kinds: every field known (KubeRay's `ray.io/v1` RayCluster and RayJob, the
Prometheus Operator's ServiceMonitor, agent-sandbox's `extensions.agents.x-k8s.io/v1beta1`
SandboxTemplate, SandboxWarmPool and SandboxClaim, as their API types name the fields used), and
each pod template validated strictly as a core PodTemplate. No CRD schema ships offline."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

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


class _Known(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Metadata(_Known):
    name: StrictStr
    namespace: StrictStr
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}


class _Group(_Known):
    rayStartParams: dict[str, StrictStr]  # noqa: N815 - the API's names
    template: dict[str, Any]


class _HeadGroup(_Group):
    serviceType: Literal["ClusterIP", "NodePort", "LoadBalancer"] | None = None  # noqa: N815


class _WorkerGroup(_Group):
    groupName: StrictStr  # noqa: N815
    replicas: StrictInt = Field(ge=0)
    minReplicas: StrictInt = Field(ge=0)  # noqa: N815
    maxReplicas: StrictInt = Field(ge=0)  # noqa: N815


class RayClusterSpec(_Known):
    rayVersion: StrictStr  # noqa: N815
    enableInTreeAutoscaling: StrictBool  # noqa: N815
    headGroupSpec: _HeadGroup  # noqa: N815
    workerGroupSpecs: list[_WorkerGroup]  # noqa: N815


class RayJobSpec(_Known):
    entrypoint: StrictStr
    shutdownAfterJobFinishes: StrictBool  # noqa: N815
    ttlSecondsAfterFinished: StrictInt = Field(ge=0)  # noqa: N815
    rayClusterSpec: RayClusterSpec  # noqa: N815
    submitterPodTemplate: dict[str, Any] | None = None  # noqa: N815


class _Endpoint(_Known):
    port: StrictStr
    path: StrictStr
    interval: StrictStr


class _Selector(_Known):
    matchLabels: dict[str, str]  # noqa: N815


class ServiceMonitorSpec(_Known):
    selector: _Selector
    endpoints: list[_Endpoint]


class _Ref(_Known):
    name: StrictStr


class SandboxTemplateSpec(_Known):
    podTemplate: dict[str, Any]  # noqa: N815
    networkPolicyManagement: Literal["Managed", "Unmanaged"]  # noqa: N815


class SandboxWarmPoolSpec(_Known):
    replicas: StrictInt = Field(ge=0)
    sandboxTemplateRef: _Ref  # noqa: N815


class _Lifecycle(_Known):
    shutdownTime: StrictStr  # noqa: N815
    shutdownPolicy: Literal["Delete", "DeleteForeground", "Retain"]  # noqa: N815


class _PodMetadata(_Known):
    labels: dict[str, str] = {}


class SandboxClaimSpec(_Known):
    warmPoolRef: _Ref  # noqa: N815
    lifecycle: _Lifecycle
    additionalPodMetadata: _PodMetadata | None = None  # noqa: N815


SPECS: dict[str, type[_Known]] = {
    "RayCluster": RayClusterSpec,
    "RayJob": RayJobSpec,
    "ServiceMonitor": ServiceMonitorSpec,
    "SandboxTemplate": SandboxTemplateSpec,
    "SandboxWarmPool": SandboxWarmPoolSpec,
    "SandboxClaim": SandboxClaimSpec,
}


def validate_custom(doc: dict[str, Any]) -> None:
    """Raise if `doc` has a field its kind lacks, or a Ray pod template Kubernetes would refuse."""
    assert (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS, doc["kind"]
    assert set(doc) <= {"apiVersion", "kind", "metadata", "spec", "status"}, sorted(doc)
    _Metadata.model_validate({k: v for k, v in doc["metadata"].items() if k not in ("uid", "creationTimestamp")})
    spec = SPECS[doc["kind"]].model_validate(doc["spec"])
    if isinstance(spec, SandboxTemplateSpec):
        validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": spec.podTemplate})
    cluster = spec.rayClusterSpec if isinstance(spec, RayJobSpec) else spec
    if isinstance(cluster, RayClusterSpec):
        for group in [cluster.headGroupSpec, *cluster.workerGroupSpecs]:
            pod_template = {
                "apiVersion": "v1",
                "kind": "PodTemplate",
                "metadata": {"name": "t"},
                "template": group.template,
            }
            validate(pod_template)


def ray_groups(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A RayCluster's or RayJob's groups by name ('head' for the head group)."""
    cluster = doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]
    return {"head": cluster["headGroupSpec"], **{g["groupName"]: g for g in cluster["workerGroupSpecs"]}}
