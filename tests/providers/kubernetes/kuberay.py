"""The pods KubeRay's operator makes of a RayCluster or RayJob, as v1.4.2 (the chart's pinned
KubeRay) builds them: what the chart's templates never show but the namespace's Pod Security
admission judges.

    head group     its template, as written
    worker groups  plus the `wait-gcs-ready` init container (ray-operator/controllers/ray/
                   common/pod.go, DefaultWorkerPodTemplate): the Ray container's image, env,
                   mounts and securityContext, KubeRay's resources (its health-check
                   loop abbreviated: the profile judges the securityContext, not the script)
    RayJob         plus the submitter pod (rayjob_controller.go, getSubmitterTemplate): the
                   job's submitterPodTemplate, or else KubeRay's default (common/job.go,
                   GetDefaultSubmitterTemplate), which has no securityContext at all; KubeRay
                   sets its command when the template has none (`ray job submit`, abbreviated
                   here), and appends three env vars

The in-tree autoscaler's sidecar is not modelled: a template that enables it is refused here.
"""

from __future__ import annotations

import copy
from typing import Any

from tests.providers.kubernetes.custom_resources import ray_groups

KUBERAY_VERSION = "1.4.2"
RAY_CONTAINER = 0
"""KubeRay's `utils.RayContainerIndex`: the first container is Ray's."""
_BASH = ["/bin/bash", "-c", "--"]
"""`utils.GetContainerCommand` without a login shell; `-ce` for the submitter."""
_SMALL = {"cpu": "200m", "memory": "256Mi"}


def _pod(name: str, template: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": copy.deepcopy(template["spec"])}


def _wait_gcs_ready(ray: dict[str, Any]) -> dict[str, Any]:
    container = {
        "name": "wait-gcs-ready",
        "image": ray["image"],
        "command": _BASH,
        "args": ["until ray health-check --address HEAD:6379; do sleep 5; done"],
        "env": copy.deepcopy(ray.get("env", [])),
        "volumeMounts": copy.deepcopy(ray.get("volumeMounts", [])),
        "resources": {"limits": _SMALL, "requests": _SMALL},
    }
    if "imagePullPolicy" in ray:
        container["imagePullPolicy"] = ray["imagePullPolicy"]
    if "securityContext" in ray:
        container["securityContext"] = copy.deepcopy(ray["securityContext"])
    return container


def default_submitter_template(head_image: str) -> dict[str, Any]:
    """KubeRay's template for a RayJob that names none: no securityContext."""
    return {
        "spec": {
            "containers": [
                {
                    "name": "ray-job-submitter",
                    "image": head_image,
                    "resources": {
                        "limits": {"cpu": "1", "memory": "1Gi"},
                        "requests": {"cpu": "500m", "memory": "200Mi"},
                    },
                }
            ],
            "restartPolicy": "Never",
        }
    }


def _submitter(job: dict[str, Any]) -> dict[str, Any]:
    head = ray_groups(job)["head"]["template"]["spec"]["containers"][RAY_CONTAINER]
    template = job["spec"].get("submitterPodTemplate") or default_submitter_template(head["image"])
    pod = _pod("submitter", template)
    container = pod["spec"]["containers"][RAY_CONTAINER]
    if not container.get("command"):
        container["command"] = ["/bin/bash", "-ce", "--"]
        container["args"] = ["ray job submit --address http://HEAD:8265 -- " + job["spec"]["entrypoint"]]
    container["env"] = [
        *container.get("env", []),
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "RAY_DASHBOARD_ADDRESS", "value": "HEAD:8265"},
        {"name": "RAY_JOB_SUBMISSION_ID", "value": "job"},
    ]
    return pod


def operator_pods(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every pod KubeRay would create for `doc` (a RayCluster or RayJob), one per group, by group name."""
    cluster = doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]
    if cluster.get("enableInTreeAutoscaling"):
        raise NotImplementedError("the autoscaler sidecar KubeRay adds to the head is not modelled")
    pods = {}
    for name, group in ray_groups(doc).items():
        pod = _pod(name, group["template"])
        if name != "head":
            ray = pod["spec"]["containers"][RAY_CONTAINER]
            pod["spec"]["initContainers"] = [*pod["spec"].get("initContainers", []), _wait_gcs_ready(ray)]
        pods[name] = pod
    if doc["kind"] == "RayJob":
        pods["submitter"] = _submitter(doc)
    return pods
