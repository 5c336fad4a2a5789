"""The pinned upstream CRDs are upstream's, their strict validators refuse what an API server with
strict field validation refuses, and the emulated API server refuses such an object on create
(422 Invalid), so the provider hears what a real one would tell it."""

from __future__ import annotations

import asyncio
import copy
import gzip
import hashlib
import re
from typing import Any

import pytest

from hillclimb.provider_errors import BadSpecError
from providers.contract import SandboxSpec
from providers.kubernetes.provider import KubernetesProvider
from providers.kubernetes.warm_pool import sandbox_claim, warm_pool_objects
from tests.providers.kubernetes.crd_schemas import CRDS, crd_errors
from tests.providers.kubernetes.emulator import NAMESPACE, ClusterEmulator
from tests.providers.kubernetes.test_kubernetes_chart import IMAGE, render

PINS = re.findall(
    r"^\| `(\S+\.yaml\.gz)` \| \S+ \| \S+ \| `\S+` \| `([0-9a-f]{40})` \|$", (CRDS / "README.md").read_text(), re.M
)


def test_every_pinned_crd_is_the_upstream_blob_its_readme_names() -> None:
    assert sorted(name for name, _ in PINS) == sorted(p.name for p in CRDS.glob("*.yaml.gz"))
    for name, blob in PINS:
        content = gzip.decompress((CRDS / name).read_bytes())
        assert hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest() == blob, name


def _of(kind: str, values: dict[str, Any]) -> dict[str, Any]:
    (found,) = [d for d in render({**IMAGE, **values}) if d["kind"] == kind]
    return found


def _claim() -> dict[str, Any]:
    return sandbox_claim("hc-x", namespace=NAMESPACE, warm_pool="hillclimb-0", labels={"a": "b"}, ttl_s=60)


def _break(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    broken, node = copy.deepcopy(doc), None
    *parents, leaf = path.split("/")
    node = broken
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    node[leaf] = value
    return broken


JOB_MODE = {"ray": {"mode": "job"}, "job": {"runsClaim": "hillclimb-runs"}}  # learner pods need shared storage

CHART_CASES = [
    (_of("RayCluster", {}), "spec/workerGroupSpecs/0/groupname", "w", "'groupname' was unexpected"),
    (_of("RayCluster", {}), "spec/workerGroupSpecs/0/replicas", "2", "'2' is not of type 'integer'"),
    (_of("RayCluster", {}), "spec/headGroupSpec/serviceType", 1, "1 is not of type 'string'"),
    (_of("RayJob", JOB_MODE), "spec/submitterPodTemplate/spec/restartpolicy", "Never", "unexpected"),
    (_of("RayJob", JOB_MODE), "spec/shutdownAfterJobFinishes", "yes", "not of type 'boolean'"),
    (_of("ServiceMonitor", {"metrics": {"serviceMonitor": "always"}}), "spec/endpoints/0/targetport", 1, "unexpected"),
]


@pytest.mark.parametrize(("doc", "path", "value", "words"), CHART_CASES, ids=lambda c: c if isinstance(c, str) else "")
def test_the_strict_crd_validators_refuse_what_the_api_server_refuses(
    doc: dict[str, Any], path: str, value: Any, words: str
) -> None:
    assert crd_errors(doc) == []  # as the chart renders it
    assert any(words in error for error in crd_errors(_break(doc, path, value)))


def test_int_or_string_and_open_objects_take_what_kubernetes_takes() -> None:
    cluster = _of("RayCluster", {})
    head = "spec/headGroupSpec/template"
    assert crd_errors(_break(cluster, f"{head}/spec/containers/0/resources/limits/cpu", 2)) == []  # int-or-string
    assert crd_errors(_break(cluster, f"{head}/metadata/annotations", {"x": "y"})) == []  # ObjectMeta, unlisted


def test_the_agent_sandbox_objects_the_provider_makes_are_valid_and_a_typo_is_not() -> None:
    template, pool = warm_pool_objects(SandboxSpec(), namespace=NAMESPACE, image="i", runtime_class=None, replicas=2)
    assert crd_errors(template) == crd_errors(pool) == crd_errors(_claim()) == []
    assert any("'warmpoolRef' was unexpected" in e for e in crd_errors(_break(_claim(), "spec/warmpoolRef", {})))
    assert any(
        "'Forever' is not one of" in e for e in crd_errors(_break(_claim(), "spec/lifecycle/shutdownPolicy", "Forever"))
    )
    assert any("-1 is less than the minimum" in e for e in crd_errors(_break(pool, "spec/replicas", -1)))


async def test_the_emulated_api_server_answers_an_invalid_custom_object_with_422(
    api: ClusterEmulator, provider: KubernetesProvider
) -> None:
    broken = _break(_claim(), "spec/lifecycle/shutdownPolicy", "Forever")
    with pytest.raises(BadSpecError, match=r"refused the sandboxclaims object: .*Forever"):
        await asyncio.to_thread(
            provider._custom_call, "create", "sandboxclaims", "create_namespaced_custom_object", broken
        )
    await asyncio.to_thread(
        provider._custom_call, "create", "sandboxclaims", "create_namespaced_custom_object", _claim()
    )
