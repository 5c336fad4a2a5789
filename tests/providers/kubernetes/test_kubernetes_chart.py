"""The Helm chart, rendered by Helm's own engine (helm-python-sdk: Helm's Go library, no binary):
every document a valid Kubernetes object, the sandbox namespace restricted and egress-denied by
the very policy the provider checks for, RBAC exactly what the provider calls (measured against
the emulated API server), rollout workers placed only where sandboxes admit them, the run config
a job runs one `hillclimb train` accepts, its learner ranks on the learner pods' GPUs, and values
held to a schema generated from the pydantic models."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from hillclimb.config import load_config
from hillclimb.config.chart import ChartSection, ChartValues, values_schema
from orchestrator.reaper import reap
from providers.contract import EgressPolicy, SandboxSpec
from providers.kubernetes.egress import SANDBOX_ROLE, default_deny, egress_findings
from providers.kubernetes.provider import SERVICE, KubernetesProvider
from tests.providers.kubernetes.custom_resources import CUSTOM_KINDS, ray_groups, validate_custom
from tests.providers.kubernetes.emulator import cluster, validate

CHART = Path(__file__).resolve().parents[3] / "helm" / "hillclimb"
RELEASE_NAMESPACE = "hillclimb"


IMAGE = {"image": {"repository": "registry.example/hillclimb-ray"}}
"""The one value without a default (unless ray.mode is none)."""


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    with helm.Chart.load(str(CHART)) as chart:
        files = chart.render(values=values or {}, name="hc", namespace=RELEASE_NAMESPACE)
    return [doc for name, text in files.items() if name.endswith(".yaml") for doc in yaml.safe_load_all(text) if doc]


def _one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind]
    return found


def _service(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == name]
    return found


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return render(IMAGE)


VALUES_FILES = sorted((CHART / "ci").glob("*.yaml"))
SANDBOX_SIDE = {"Namespace", "NetworkPolicy", "Service", "ServiceAccount", "Role", "RoleBinding"}
KINDS = {
    "cluster": SANDBOX_SIDE | {"RayCluster", "CronJob"},
    "job": SANDBOX_SIDE | {"RayJob", "ConfigMap", "CronJob"},
    "none": SANDBOX_SIDE,
}


@pytest.mark.parametrize("values_file", [None, *VALUES_FILES], ids=lambda p: p.name if p else "defaults")
def test_every_document_is_a_valid_kubernetes_object(values_file: Path | None) -> None:
    """For the default values (and an image) and every values file under helm/hillclimb/ci/."""
    values = yaml.safe_load(values_file.read_text()) if values_file else IMAGE
    docs = render(values)
    wanted = KINDS[values.get("ray", {}).get("mode", "cluster")]
    if values.get("metrics", {}).get("serviceMonitor") == "always":
        wanted = wanted | {"ServiceMonitor"}
    assert {d["kind"] for d in docs} == wanted
    for doc in docs:
        validate_custom(doc) if (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS else validate(doc)
    namespace = next(d for d in docs if d["kind"] == "Namespace")["metadata"]["name"]
    assert _one(docs, "NetworkPolicy") == default_deny(namespace)


def test_without_an_image_the_install_says_what_to_set() -> None:
    with pytest.raises(helm.HelmRenderError, match="image.repository: name an image with Ray and hillclimb"):
        render()
    assert {d["kind"] for d in render({"ray": {"mode": "none"}})} == SANDBOX_SIDE


def test_the_sandbox_namespace_is_restricted_and_denies_egress_as_the_provider_checks(docs) -> None:
    namespace = _one(docs, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    policy = _one(docs, "NetworkPolicy")
    assert policy == default_deny(namespace["metadata"]["name"])  # one policy, two places
    assert egress_findings([policy]) == []
    service = _service(docs, SERVICE)
    assert service["metadata"]["namespace"] == namespace["metadata"]["name"] and service["spec"]["clusterIP"] == "None"


def test_values_move_everything_to_the_named_namespace() -> None:
    docs = render(
        {"sandboxes": {"namespace": "agents"}, "serviceAccount": {"name": "rollouts"}, "ray": {"mode": "none"}}
    )
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
        ({"ray": {"learners": {"memory": "lots"}}}, "/ray/learners/memory"),
        ({"job": {"config": {"rollout": {"group_size": 0}}}}, "/job/config/rollout/group_size"),  # hillclimb's own
        ({"job": {"config": {"rollout": {"group_sise": 2}}}}, "additional properties 'group_sise' not allowed"),
    ],
)
def test_a_bad_value_is_rejected_by_the_schema(values: dict[str, Any], words: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=words):
        render({**IMAGE, **values})


def test_the_schema_file_is_the_models() -> None:
    on_disk = json.loads((CHART / "values.schema.json").read_text())
    assert on_disk == values_schema(), (
        "regenerate: python -m hillclimb.config.chart > helm/hillclimb/values.schema.json"
    )


def _leaves(model: type[Any], prefix: str = "") -> dict[str, Any]:
    """Every value's dotted name and default, as values.yaml spells them (a run config is one)."""
    leaves: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        key = prefix + (field.alias or name)
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, ChartSection):
            leaves |= _leaves(sub, key + ".")
        else:
            leaves[key] = field.get_default(call_default_factory=False)
    return leaves


def test_values_yaml_and_the_values_table_list_every_value_with_its_default() -> None:
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    table = (CHART.parent / "README.md").read_text()
    for key, default in _leaves(ChartValues).items():
        node = defaults
        for part in key.split("."):
            node = node[part]
        if key != "job.config":
            assert node == default, f"values.yaml has {key}: {node!r}, the models {default!r}"
        assert re.search(rf"^\| `{re.escape(key)}` \|", table, re.M), f"helm/README.md's table lacks {key}"


def _pod(group: dict[str, Any]) -> dict[str, Any]:
    return group["template"]["spec"]


def _offered(group: dict[str, Any]) -> dict[str, float]:
    """The custom resources a Ray group offers, read as `ray start --resources` gets them (a shell word)."""
    raw = group["rayStartParams"].get("resources")
    return json.loads(shlex.split(raw)[0]) if raw else {}


def _run_config(docs: list[dict[str, Any]], tmp_path: Path) -> Any:
    (path := tmp_path / "run.yaml").write_text(_one(docs, "ConfigMap")["data"]["run.yaml"])
    return load_config(path)


@pytest.mark.parametrize("values_file", ["ray-job.yaml", "other-names.yaml"])
def test_rollout_workers_land_only_where_sandboxes_admit_them(values_file: str, tmp_path: Path) -> None:
    """The run's workers ask Ray for a resource only the rollout-worker group offers, and that
    group's pods alone carry the label the sandboxes' policy admits and the bound account."""
    values = yaml.safe_load((CHART / "ci" / values_file).read_text())
    docs = render({**values, "ray": {**values.get("ray", {}), "mode": "job"}})
    wanted = _run_config(docs, tmp_path).ray.worker_resources
    groups = ray_groups(_one(docs, "RayJob"))
    admitted = _one(docs, "NetworkPolicy")["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    (subject,) = _one(docs, "RoleBinding")["subjects"]
    hosts = [name for name, group in groups.items() if set(wanted) <= set(_offered(group))]
    assert hosts == ["rollout-workers"]
    for name, group in groups.items():
        labels, pod = group["template"]["metadata"]["labels"], _pod(group)
        reaches_sandboxes = admitted.items() <= labels.items()
        assert reaches_sandboxes == (name == "rollout-workers"), name
        assert (pod.get("serviceAccountName") == subject["name"]) == (name == "rollout-workers"), name
        if name != "rollout-workers":
            assert pod["automountServiceAccountToken"] is False, name


def test_a_job_runs_the_config_map_as_a_run_config_of_the_charts_cluster(tmp_path: Path) -> None:
    values = yaml.safe_load((CHART / "ci" / "ray-job.yaml").read_text())
    docs = render(values)
    config = _run_config(docs, tmp_path)
    assert config.rollout.group_size == 2 and config.ray.num_workers == 4  # the user's, kept
    assert (config.provider.type, config.provider.options) == (
        "kubernetes",
        {"namespace": "hillclimb-sandboxes", "image": values["sandboxes"]["image"]},
    )
    job, head = _one(docs, "RayJob"), ray_groups(_one(docs, "RayJob"))["head"]
    container = _pod(head)["containers"][0]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert job["spec"]["entrypoint"] == f"python -m orchestrator train {mounts['run-config']}/run.yaml"
    assert mounts["runs"] == str(config.run.dir)
    volumes = {v["name"]: v for v in _pod(head)["volumes"]}
    assert volumes["runs"]["persistentVolumeClaim"]["claimName"] == values["job"]["runsClaim"]
    assert volumes["run-config"]["configMap"]["name"] == _one(docs, "ConfigMap")["metadata"]["name"]
    assert "learners" not in ray_groups(job)  # learners.replicas: 0
    # /metrics: the driver listens on the pod's address, at the port the head exposes and the Service targets
    service = _service(docs, "hc-run-metrics")
    assert config.run.metrics_host == "0.0.0.0"
    assert {"name": "run-metrics", "containerPort": config.run.metrics_port} in container["ports"]
    assert service["spec"]["ports"][0]["targetPort"] == "run-metrics"
    assert service["spec"]["selector"].items() <= head["template"]["metadata"]["labels"].items()
    assert service["metadata"]["annotations"]["prometheus.io/port"] == str(config.run.metrics_port)


def test_learners_ask_for_gpus_and_tolerate_gpu_nodes(docs: list[dict[str, Any]]) -> None:
    values = yaml.safe_load((CHART / "ci" / "other-names.yaml").read_text())
    learners = ray_groups(_one(render(values), "RayCluster"))["learners"]
    assert learners["replicas"] == learners["minReplicas"] == learners["maxReplicas"] == 2
    limits = _pod(learners)["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 8
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in _pod(learners)["tolerations"]
    rollout = ray_groups(_one(docs, "RayCluster"))["rollout-workers"]
    assert "nvidia.com/gpu" not in _pod(rollout)["containers"][0]["resources"]["limits"]


GPU_SETTINGS = {"device": "cuda", "gpus_per_learner": 1.0, "resources_per_learner": {"learner_gpu": 1.0}}
CPU_SETTINGS = {"device": "cpu", "gpus_per_learner": 0.0, "resources_per_learner": {}}


@pytest.mark.parametrize(
    ("learners", "learner_config", "wanted"),
    [
        ({"replicas": 2, "gpus": 4}, {}, {**GPU_SETTINGS, "num_learners": 8}),  # a rank on each GPU
        ({"replicas": 1, "gpus": 8}, {"num_learners": 2}, {**GPU_SETTINGS, "num_learners": 2}),  # the user's width
        ({"replicas": 1, "gpus": 0}, {}, {**CPU_SETTINGS, "num_learners": 1}),
        ({"replicas": 0, "gpus": 1}, {}, {**CPU_SETTINGS, "num_learners": 1}),
    ],
)
def test_a_jobs_learner_ranks_train_on_the_gpus_its_learner_group_asks_for(
    learners: dict[str, int], learner_config: dict[str, Any], wanted: dict[str, Any], tmp_path: Path
) -> None:
    """The job's command line makes each rank reserve (and so be handed by Ray) one of the GPUs the
    learner pods ask Kubernetes for; without GPUs it is the bare command. Read as `hillclimb train` reads it."""
    config = {"learner": learner_config} if learner_config else {}
    job = {"config": config, "runsClaim": "runs"}
    docs = render({**IMAGE, "ray": {"mode": "job", "learners": learners}, "job": job})
    command = shlex.split(_one(docs, "RayJob")["spec"]["entrypoint"])
    assert command[:4] == ["python", "-m", "orchestrator", "train"]
    flags, settings = command[5::2], command[6::2]
    assert set(flags) <= {"--set"} and len(flags) == len(settings)
    if not learners["replicas"] * learners["gpus"]:
        assert settings == []
    (path := tmp_path / "run.yaml").write_text(_one(docs, "ConfigMap")["data"]["run.yaml"])
    learner = load_config(path, settings).learner
    assert {key: getattr(learner, key) for key in wanted} == wanted
    gpus = learners["replicas"] * learners["gpus"]
    assert learner.num_learners * learner.gpus_per_learner <= gpus  # the ranks' placement group fits


def _gpus(group: dict[str, Any]) -> int:
    return _pod(group)["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0)


def test_a_7b_job_on_two_nodes_gives_every_gpu_one_owner_and_every_pod_the_run_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ci/gpu-7b-job.yaml, read as `hillclimb train` reads it: one learner rank per learner-pod GPU,
    pinned there by a resource only learner pods offer; the engine's GPUs are its own pod's; all
    pods fit two 8-GPU nodes; every Ray pod mounts the claimed run dir where the config writes it
    and keeps to the restricted pod security profile; GPU pods get a sized memory-backed /dev/shm;
    and the plan `--dry-run` prints fits 80 GiB GPUs."""
    from orchestrator.placement_plan import placement_plan
    from tests.orchestrator.test_placement_plan import QWEN_7B
    from tests.providers.kubernetes.test_kubernetes_pod import restricted_violations

    values = yaml.safe_load((CHART / "ci" / "gpu-7b-job.yaml").read_text())
    docs = render(values)
    job = _one(docs, "RayJob")
    groups = ray_groups(job)
    settings = shlex.split(job["spec"]["entrypoint"])[6::2]
    config = load_config(_write(tmp_path / "run.yaml", _one(docs, "ConfigMap")["data"]["run.yaml"]), settings)
    learners, engines = groups["learners"], groups["engines"]
    assert config.learner.num_learners == learners["replicas"] * _gpus(learners) == 14
    assert config.learner.resources_per_learner == {"learner_gpu": 1.0}
    offering = {name for name, group in groups.items() if "learner_gpu" in _offered(group)}
    assert offering == {"learners"} and _offered(learners)["learner_gpu"] == _gpus(learners)
    assert config.policy.gpus == _gpus(engines) and config.policy.engines == engines["replicas"] == 1
    gpu_pods = [_gpus(g) for g in groups.values() for _ in range(g.get("replicas", 1)) if _gpus(g)]
    assert sum(gpu_pods) <= 2 * 8 and max(gpu_pods) <= 8  # two 8-GPU nodes hold them
    for name, group in groups.items():
        pod = _pod(group)
        mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert mounts["runs"] == str(config.run.dir), name
        assert volumes["runs"]["persistentVolumeClaim"]["claimName"] == values["job"]["runsClaim"], name
        assert restricted_violations({"spec": pod}) == [], name
        if _gpus(group):
            assert mounts["shm"] == "/dev/shm", name
            assert volumes["shm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": values["ray"][name]["shm"]}, name
    limits = _pod(learners)["containers"][0]["resources"]["limits"]
    assert limits["memory"] == values["ray"]["learners"]["memory"]
    (model := tmp_path / "qwen2.5-7b").mkdir()
    _write(model / "config.json", json.dumps(QWEN_7B))
    planned = config.model_copy(
        update={
            "policy": config.policy.model_copy(
                update={"model": config.policy.model.model_copy(update={"name_or_path": str(model)})}
            )
        }
    )
    plan = placement_plan(planned, gpu_gib=80, gpus_per_node=_gpus(learners))
    assert (plan["learners"]["nodes"], plan["learners"]["ranks_per_node"]) == (2, 7)
    assert plan["fits"] is True
    assert plan["learners"]["host_memory_per_pod_gib"] < _gibibytes(limits["memory"])
    engine_memory = _pod(engines)["containers"][0]["resources"]["limits"]["memory"]
    assert plan["engines"]["host_memory_per_pod_gib"] < _gibibytes(engine_memory)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _gibibytes(quantity: str) -> float:
    assert quantity.endswith("Gi")
    return float(quantity.removesuffix("Gi"))


def test_a_job_with_learner_pods_needs_a_shared_run_dir() -> None:
    with pytest.raises(helm.HelmRenderError, match="job.runsClaim: .*ReadWriteMany"):
        render({**IMAGE, "ray": {"mode": "job", "learners": {"replicas": 2, "gpus": 8}}})


VLLM = {"type": "vllm", "model": {"type": "hf", "name_or_path": "Qwen/Qwen2.5-7B-Instruct"}}


@pytest.mark.parametrize(
    ("engines", "policy", "words"),
    [
        ({"replicas": 1}, {}, r"ray.engines.replicas: .*\(type scripted\) holds no model"),
        ({"replicas": 0}, VLLM, r"ray.engines.replicas: policy.type vllm needs a GPU of its own"),
        ({"replicas": 1, "gpus": 1}, {**VLLM, "gpus": 2}, r"job.config.policy.gpus \(2\) is more than the engine pod"),
    ],
)
def test_an_engine_that_could_never_run_is_refused(engines: dict[str, int], policy: dict[str, Any], words: str) -> None:
    job = {"runsClaim": "runs", "config": {"policy": policy} if policy else {}}
    with pytest.raises(helm.HelmRenderError, match=words):
        render({**IMAGE, "ray": {"mode": "job", "engines": engines}, "job": job})


@pytest.mark.parametrize(("setting", "made"), [("always", True), ("never", False), ("auto", False)])
def test_a_service_monitor_scrapes_the_run_metrics_service(setting: str, made: bool) -> None:
    """auto: none here, where the Prometheus Operator's CRD is not installed."""
    docs = render({**IMAGE, "metrics": {"serviceMonitor": setting}})
    monitors = [d for d in docs if d["kind"] == "ServiceMonitor"]
    assert len(monitors) == made
    if made:
        service = _service(docs, "hc-run-metrics")
        assert monitors[0]["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        assert monitors[0]["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]


def test_the_reaper_reaps_the_sandbox_namespace_as_the_rollout_workers_account(docs) -> None:
    cron = _one(docs, "CronJob")
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (subject,) = _one(docs, "RoleBinding")["subjects"]
    assert pod["serviceAccountName"] == subject["name"]
    command = pod["containers"][0]["command"]
    assert command[:5] == ["python", "-m", "orchestrator", "sandbox", "reap"]
    assert command[5:] == ["--provider", "kubernetes", "-o", f"namespace={_one(docs, 'Namespace')['metadata']['name']}"]
    assert SANDBOX_ROLE not in cron["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"] or (
        cron["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"][SANDBOX_ROLE] == "reaper"
    )  # not a rollout worker: the sandboxes do not admit it
    assert render({**IMAGE, "reaper": {"schedule": ""}}) == [d for d in docs if d["kind"] != "CronJob"]


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


async def _requests_of_a_lifecycle(provider: KubernetesProvider, api: Any, spec: SandboxSpec) -> set[tuple[str, str]]:
    """(verb, resource) of every request the provider makes for one sandbox's whole life."""
    before = len(list(api))
    beat = await asyncio.to_thread(provider.run_liveness.beat, "run")
    sandbox = await provider.create(spec)
    await provider.list()
    await provider.log_tail(sandbox.id)
    await asyncio.to_thread(beat.renew)
    await reap(provider)  # reads the run's liveness
    await provider.destroy(sandbox.id)
    await asyncio.to_thread(beat.stop)
    return {_used(request) for request in list(api)[before:] if request.resource is not None}


async def _install_the_charts_policy(provider: KubernetesProvider) -> None:
    install = provider._networking.create_namespaced_network_policy  # the chart's part, not the provider's
    await asyncio.to_thread(install, "hillclimb-sandboxes", default_deny("hillclimb-sandboxes"))


async def test_rbac_grants_exactly_what_the_provider_uses(docs: list[dict[str, Any]]) -> None:
    granted = _granted(_one(docs, "Role"))
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    async with cluster() as api:
        provider = KubernetesProvider(namespace="hillclimb-sandboxes", api_url=str(api.url).rstrip("/"))
        allow = EgressPolicy(mode="allow_list", allow=("10.0.0.0/8",))
        await _install_the_charts_policy(provider)
        try:  # every call it makes: a keyed create reads first, an allow-list makes a policy
            used = await _requests_of_a_lifecycle(provider, api, SandboxSpec(egress=allow, idempotency_key="k"))
        finally:
            await provider.close()
    assert used <= granted, f"the provider uses {sorted(used - granted)} the chart's Role does not grant"
    assert granted <= used, f"the chart grants {sorted(granted - used)} the provider never uses"


async def test_rbac_for_warm_pools_grants_what_claiming_uses() -> None:
    """sandboxes.agentSandbox adds exactly the rights the provider's warm_pool option calls."""
    from tests.providers.kubernetes.agent_sandbox import Controller

    base = _granted(_one(render(IMAGE), "Role"))
    granted = _granted(_one(render({**IMAGE, "sandboxes": {"agentSandbox": True}}), "Role"))
    used: set[tuple[str, str]] = set()
    async with cluster() as api, Controller(api):
        for attempt in range(2):  # the second, another process: its template and pool exist already
            provider = KubernetesProvider(
                namespace="hillclimb-sandboxes", api_url=str(api.url).rstrip("/"), warm_pool=2
            )
            if attempt == 0:
                await _install_the_charts_policy(provider)
            try:
                used |= await _requests_of_a_lifecycle(provider, api, SandboxSpec(idempotency_key="k"))
            finally:
                await provider.close()
    assert used <= granted, f"the provider uses {sorted(used - granted)} the chart's Role does not grant"
    assert granted - base <= used, f"the chart grants {sorted(granted - base - used)} claiming never uses"
