"""The Helm chart's values as pydantic models: the one source of `helm/hillclimb/values.schema.json`.

    python -m hillclimb.config.chart > helm/hillclimb/values.schema.json

Helm checks every install's values against that schema, so a misspelt key, a quantity
Kubernetes would refuse or a run config `hillclimb train` would refuse is reported by
`helm install` itself; a test fails when the file and these models drift apart. The
sandbox-side values (`SandboxValues`) are what the Kubernetes provider must agree with: its
default namespace comes from here.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from hillclimb.config.run import RunConfig

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
CPU = r"^[0-9]+(\.[0-9]+)?m?$"
MEMORY = r"^[0-9]+(\.[0-9]+)?([KMGTPE]i?)?$"
_CRON_ITEM = r"(\*|\?|[0-9]+(-[0-9]+)?|[A-Za-z]{3}(-[A-Za-z]{3})?)(/[0-9]+)?"
_CRON_FIELD = rf"{_CRON_ITEM}(,{_CRON_ITEM})*"
CRON = rf"^$|^@(yearly|annually|monthly|weekly|daily|midnight|hourly)$|^{_CRON_FIELD}([ \t]+{_CRON_FIELD}){{4}}$"
"""A CronJob schedule as Kubernetes parses it (robfig/cron's standard parser): five fields of
numbers, names, ranges, steps and lists, or a descriptor; or empty. The fields' ranges are left
to the API server."""
RAY_VERSION = "2.60.0"
"""The Ray the chart's cluster runs by default: the version hillclimb is tested with."""


class ChartSection(BaseModel):
    """A block of values: camelCase keys as Helm charts spell them, unknown keys refused."""

    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, use_attribute_docstrings=True
    )


class SandboxValues(ChartSection):
    namespace: str = Field(default="hillclimb-sandboxes", pattern=DNS_LABEL)
    """Where sandbox pods run: restricted pod security, all egress denied. The provider's
    `namespace` option must name the same."""
    image: str = ""
    """The sandbox image, pushed where the cluster pulls from (`hillclimb image push REF` prints
    it pinned by digest); the provider's `image` option, which a run the chart starts gets."""
    runtime_class: str | None = Field(default=None, pattern=DNS_LABEL)
    """A RuntimeClass for sandbox pods (gVisor, Kata): the provider's `runtime_class` option."""
    agent_sandbox: bool = False
    """Grant the rights the provider's `warm_pool` option uses: sandboxes claimed from a warm
    pool of the agent-sandbox CRDs (their controller must run in the cluster)."""


class ServiceAccountValues(ChartSection):
    name: str = Field(default="hillclimb-rollout", pattern=DNS_LABEL)
    """The rollout workers' identity, in the release's namespace."""


class ImageValues(ChartSection):
    repository: str = ""
    """An image with Ray and `hillclimb[k8s]` installed (the head, workers, learners and reaper
    run it). Required unless `ray.mode` is none."""
    tag: str = ""
    """Defaults to the chart's appVersion."""
    pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"


class PodResources(ChartSection):
    cpu: str = Field(default="2", pattern=CPU)
    memory: str = Field(default="8Gi", pattern=MEMORY)


class RolloutWorkerValues(PodResources):
    replicas: int = Field(default=2, ge=0)
    """Pods of the rollout-worker group: the only Ray nodes that may reach sandboxes (they carry
    the rollout-worker label and the service account) and the only ones that offer the
    `rollout_worker` resource hillclimb's rollout workers ask for."""
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=8, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> RolloutWorkerValues:
        # JSON schema compares no two fields: the chart's values-checks.yaml fails the install too.
        if not self.min_replicas <= self.replicas <= self.max_replicas:
            raise ValueError(
                f"minReplicas ({self.min_replicas}) <= replicas ({self.replicas}) <= maxReplicas "
                f"({self.max_replicas}) must hold"
            )
        return self


class GpuPodValues(PodResources):
    """A group of GPU pods: one pod per node is the intent, its GPUs joined by the node's NVLink."""

    gpus: int = Field(default=1, ge=0)
    """GPUs per pod (requested as `nvidia.com/gpu`; the pods tolerate the GPU taint)."""
    cpu: str = Field(default="8", pattern=CPU)
    memory: str = Field(default="64Gi", pattern=MEMORY)
    """The pod's memory, request and limit. Under FSDP rank 0 reads the whole model into host
    memory in fp32 (4 bytes a parameter) and the other ranks start empty; under DDP every rank
    does; plus headroom (`hillclimb train CONFIG --dry-run` estimates it)."""
    shm: str = Field(default="16Gi", pattern=MEMORY)
    """Size of the pod's `/dev/shm` (a memory-backed emptyDir, counted against `memory`): NCCL's
    intra-node transport and Ray's object store live there, and the container runtime's 64 MiB
    default stalls them."""


class LearnerValues(GpuPodValues):
    replicas: int = Field(default=1, ge=0)
    """Pods of the GPU learner group. In job mode every one of their GPUs is a learner rank's and
    nothing else's: the ranks reserve a resource only these pods offer."""


class EngineValues(GpuPodValues):
    replicas: int = Field(default=0, ge=0)
    """Pods of the policy-engine group, one engine each (0: none; the engine then runs wherever Ray
    finds room, on the CPU unless its GPUs fit beside the learners'). In job mode the run starts
    that many engines (`policy.engines`, data parallel), each reserving `gpus` GPUs
    (`policy.gpus`), which only these pods have free once the learners have reserved theirs."""


class RayValues(ChartSection):
    mode: Literal["cluster", "job", "none"] = "cluster"
    """cluster: a RayCluster to `ray job submit` runs to; job: a RayJob that runs `hillclimb
    train` on `job.config` and ends; none: the sandbox side only (bring your own Ray)."""
    version: str = RAY_VERSION
    """Must match the Ray inside `image`."""
    head: PodResources = PodResources()
    rollout_workers: RolloutWorkerValues = RolloutWorkerValues()
    learners: LearnerValues = LearnerValues()
    engines: EngineValues = EngineValues()


class JobValues(ChartSection):
    config: RunConfig = Field(default_factory=RunConfig)
    """The run config `hillclimb train` runs in job mode (the chart sets its provider, the
    workers' Ray resource, the metrics address and the run dir)."""
    runs_claim: str | None = Field(default=None, pattern=DNS_LABEL)
    """A PersistentVolumeClaim for the run dir (ledger, checkpoints), mounted at the same path on
    every Ray pod, since any rank or actor may write there: it must be ReadWriteMany once there
    is more than one pod. None: an emptyDir per pod, lost with it, which a job with learner pods
    refuses (their checkpoints would land on a disk the driver never sees)."""
    shutdown_after_job_finishes: bool = True
    ttl_seconds_after_finished: int = Field(default=600, ge=0)


class MetricsValues(ChartSection):
    port: int = Field(default=9400, ge=1, le=65535)
    """The run's /metrics on the driver (the head pod), scraped through a Service."""
    service_monitor: Literal["auto", "always", "never"] = "auto"
    """A Prometheus Operator ServiceMonitor: auto makes one where its CRD is installed; the
    Service carries prometheus.io scrape annotations either way."""


class ReaperValues(ChartSection):
    schedule: str = Field(default="*/5 * * * *", pattern=CRON)
    """A CronJob running `hillclimb sandbox reap --provider kubernetes` (empty: none): it removes
    the sandboxes of runs whose Leases went stale and of any past their time-to-live."""


class ChartValues(ChartSection):
    sandboxes: SandboxValues = SandboxValues()
    service_account: ServiceAccountValues = ServiceAccountValues()
    image: ImageValues = ImageValues()
    ray: RayValues = RayValues()
    job: JobValues = JobValues()
    metrics: MetricsValues = MetricsValues()
    reaper: ReaperValues = ReaperValues()


def values_schema() -> dict[str, Any]:
    """The JSON schema Helm validates values with (field docs become descriptions)."""
    schema = ChartValues.model_json_schema(by_alias=True)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


if __name__ == "__main__":
    print(json.dumps(values_schema(), indent=2))
