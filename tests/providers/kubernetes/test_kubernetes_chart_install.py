"""The chart as Helm's own actions take it (helm-python-sdk embeds Helm 4's Go library): `helm lint
--strict` and an install dry run, not template rendering alone, for the default values (plus the
one value without a default) and every values file under helm/hillclimb/ci/; the rules the
values schema cannot state, refused by Helm's engine; and every pod the chart leads to, the
ones KubeRay adds included, held to the restricted Pod Security profile."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml
from pydantic import ValidationError

from hillclimb.config.chart import ChartValues
from tests.providers.kubernetes.custom_resources import CUSTOM_KINDS, validate_custom
from tests.providers.kubernetes.emulator import KUBERNETES_VERSION, validate
from tests.providers.kubernetes.kuberay import default_submitter_template, operator_pods
from tests.providers.kubernetes.test_kubernetes_chart import CHART, IMAGE, RELEASE_NAMESPACE, VALUES_FILES, render
from tests.providers.kubernetes.test_kubernetes_pod import restricted_violations

CASES = [
    pytest.param(IMAGE, id="defaults"),
    *(pytest.param(yaml.safe_load(p.read_text()), id=p.name) for p in VALUES_FILES),
]


def lint_errors(values: dict[str, Any]) -> list[str]:
    report = helm.lint(CHART, values, strict=True, namespace=RELEASE_NAMESPACE, kube_version=f"v{KUBERNETES_VERSION}")
    warned = [f"{m['path']}: {m['error']}" for m in report["messages"] if m["severity"] >= 2]
    return report["errors"] + warned


def install_dry_run(values: dict[str, Any]) -> dict[str, Any]:
    """`helm install hc ./helm/hillclimb --dry-run=client`: dependencies checked, values held to
    the schema, templates rendered, no cluster (release storage in memory)."""
    with helm.Config(namespace=RELEASE_NAMESPACE, storage_driver="memory") as config:
        return config.install(str(CHART), "hc", values, dry_run="client", namespace=RELEASE_NAMESPACE)


@pytest.mark.parametrize("values", CASES)
def test_helm_lint_strict_passes(values: dict[str, Any]) -> None:
    """Strict: a warning fails too, such as a declared dependency missing from charts/."""
    assert lint_errors(values) == []


@pytest.mark.parametrize("values", CASES)
def test_an_offline_install_dry_run_makes_what_rendering_makes(values: dict[str, Any]) -> None:
    release = install_dry_run(values)
    manifest = [doc for doc in yaml.safe_load_all(release["manifest"]) if doc]
    assert sorted(map(str, manifest)) == sorted(map(str, render(values)))
    for doc in manifest:
        validate_custom(doc) if (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS else validate(doc)
    assert "Sandboxes run in namespace" in release["notes"]


def test_a_declared_dependency_without_charts_fails_lint_and_install(tmp_path: Path) -> None:
    """What the chart no longer does: declare the KubeRay operator's chart as a dependency, which
    Helm requires under charts/ whatever its condition says."""
    chart = tmp_path / "hillclimb"
    with helm.Chart.load(str(CHART)) as loaded:
        loaded.save_dir(tmp_path)
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    meta["dependencies"] = [
        {
            "name": "kuberay-operator",
            "version": "1.4.2",
            "repository": "https://ray-project.github.io/kuberay-helm/",
            "condition": "kuberay-operator.enabled",
        }
    ]
    (chart / "Chart.yaml").write_text(yaml.safe_dump(meta))
    report = helm.lint(chart, IMAGE, strict=True)
    assert any("missing these dependencies: kuberay-operator" in e for e in report["errors"])
    with helm.Config(storage_driver="memory") as config, pytest.raises(helm.HelmError, match="kuberay-operator"):
        config.install(str(chart), "hc", IMAGE, dry_run="client")


REPLICAS = "ray.rolloutWorkers: minReplicas .* <= replicas .* <= maxReplicas .* must hold"


@pytest.mark.parametrize(
    ("values", "error", "words"),
    [
        ({"ray": {"rolloutWorkers": {"minReplicas": 4, "maxReplicas": 2}}}, helm.HelmRenderError, REPLICAS),
        ({"ray": {"rolloutWorkers": {"replicas": 9}}}, helm.HelmRenderError, REPLICAS),  # over maxReplicas: 8
        ({"ray": {"rolloutWorkers": {"replicas": 0}}}, helm.HelmRenderError, REPLICAS),  # under minReplicas: 1
        ({"reaper": {"schedule": "not a cron"}}, helm.HelmValuesError, "/reaper/schedule"),
        ({"reaper": {"schedule": "*/5 * * *"}}, helm.HelmValuesError, "/reaper/schedule"),  # four fields
        ({"reaper": {"schedule": "TZ=UTC 0 * * * *"}}, helm.HelmValuesError, "/reaper/schedule"),  # K8s refuses TZ=
    ],
)
def test_helms_engine_refuses_what_the_schema_and_checks_rule_out(
    values: dict[str, Any], error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words):
        render({**IMAGE, **values})
    with pytest.raises(helm.HelmError, match=words.split(" ")[0]):
        install_dry_run({**IMAGE, **values})
    with pytest.raises(ValidationError):  # the models say the same, outside Helm
        ChartValues.model_validate({**IMAGE, **values})


@pytest.mark.parametrize("schedule", ["", "*/5 * * * *", "0 3 * * MON-FRI", "15,45 */2 1-7 JAN,JUL ?", "@hourly"])
def test_cron_schedules_kubernetes_parses_are_accepted(schedule: str) -> None:
    kinds = {d["kind"] for d in render({**IMAGE, "reaper": {"schedule": schedule}})}
    assert ("CronJob" in kinds) == bool(schedule)


def _chart_pods(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every pod the release leads to: KubeRay's for each Ray object, the reaper's Job's."""
    pods: dict[str, dict[str, Any]] = {}
    for doc in render(values):
        if doc["kind"] in ("RayCluster", "RayJob"):
            pods |= {f"{doc['kind']}/{name}": pod for name, pod in operator_pods(doc).items()}
        elif doc["kind"] == "CronJob":
            template = doc["spec"]["jobTemplate"]["spec"]["template"]
            pods["CronJob/reaper"] = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "r"}, **template}
    return pods


JOB_MODE = {"ray": {"mode": "job"}, "job": {"runsClaim": "hillclimb-runs"}}  # learner pods need shared storage


@pytest.mark.parametrize("values", [*CASES, pytest.param({**IMAGE, **JOB_MODE}, id="job")])
def test_every_pod_the_release_leads_to_is_restricted(values: dict[str, Any]) -> None:
    """The submitter and KubeRay's wait-gcs-ready init containers included, as the release
    namespace's `restricted` enforcement would judge them."""
    pods = _chart_pods(values)
    mode = values.get("ray", {}).get("mode", "cluster")
    assert ("RayJob/submitter" in pods) == (mode == "job")
    for name, pod in pods.items():
        assert restricted_violations(pod) == [], name
        validate(pod)
        if name.endswith(("rollout-workers", "learners", "engines")):
            assert [c["name"] for c in pod["spec"]["initContainers"]] == ["wait-gcs-ready"]


def test_kuberays_default_submitter_would_break_the_restricted_profile() -> None:
    """Why the chart names a submitterPodTemplate: KubeRay's own has no securityContext."""
    (job,) = [d for d in render({**IMAGE, **JOB_MODE}) if d["kind"] == "RayJob"]
    del job["spec"]["submitterPodTemplate"]
    submitter = operator_pods(job)["submitter"]
    head_image = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    default = default_submitter_template(head_image)["spec"]
    assert {**submitter["spec"], "containers": default["containers"]} == default  # KubeRay's, then its command
    assert restricted_violations(submitter) == [
        "ray-job-submitter: privilege escalation not disallowed",
        "ray-job-submitter: may run as root",
        "ray-job-submitter: no seccomp profile",
        "ray-job-submitter: capabilities {}",
    ]
