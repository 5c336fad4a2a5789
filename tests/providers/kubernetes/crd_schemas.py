"""The upstream CRDs' OpenAPI schemas, pinned by version under crds/ (gzipped verbatim; each file's
git blob id is listed in crds/README.md, and a test recomputes it), made into validators that
refuse what an API server with strict field validation refuses:

    KubeRay v1.4.2               ray.io/v1                            RayCluster, RayJob
    agent-sandbox v0.5.6         extensions.agents.x-k8s.io/v1beta1   SandboxTemplate, SandboxWarmPool, SandboxClaim
    prometheus-operator v0.93.0  monitoring.coreos.com/v1             ServiceMonitor

A structural schema is made strict the way the API server prunes: an object that lists its
properties and does not preserve unknown fields refuses any other (an error here, as
`fieldValidation=Strict` makes it); `x-kubernetes-int-or-string` takes either; `nullable` takes
null. Not evaluated: CEL rules (`x-kubernetes-validations`) and formats. `metadata` is left to
the caller (ObjectMeta is the API server's own, not the CRD's).
"""

from __future__ import annotations

import copy
import functools
import gzip
from pathlib import Path
from typing import Any

import jsonschema  # kubernetes-validate's own validator
import yaml

CRDS = Path(__file__).parent / "crds"


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` (a CRD's structural schema) as a JSON schema that refuses what strict field
    validation refuses."""
    schema = {k: v for k, v in schema.items() if not k.startswith("x-kubernetes-validations")}
    if schema.pop("x-kubernetes-int-or-string", False):
        schema.pop("type", None)
        schema["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if schema.pop("nullable", False) and "type" in schema:
        schema["type"] = [schema["type"], "null"]
    preserve = schema.pop("x-kubernetes-preserve-unknown-fields", False)
    if "properties" in schema:
        schema["properties"] = {name: _strict(sub) for name, sub in schema["properties"].items()}
        if not preserve and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
    if isinstance(schema.get("additionalProperties"), dict):
        schema["additionalProperties"] = _strict(schema["additionalProperties"])
    if isinstance(schema.get("items"), dict):
        schema["items"] = _strict(schema["items"])
    for combined in ("allOf", "anyOf", "oneOf"):
        if combined in schema:
            schema[combined] = [_strict(sub) for sub in schema[combined]]
    return schema


@functools.cache
def _validators() -> dict[tuple[str, str], jsonschema.Draft7Validator]:
    """A validator per (apiVersion, kind) each pinned CRD serves."""
    validators = {}
    for path in sorted(CRDS.glob("*.yaml.gz")):
        crd = yaml.load(gzip.decompress(path.read_bytes()), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version["served"]:
                schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
                schema["properties"]["metadata"] = {"type": "object"}  # ObjectMeta, checked apart
                validators[(f"{group}/{version['name']}", kind)] = jsonschema.Draft7Validator(_strict(schema))
    return validators


def crd_errors(doc: dict[str, Any]) -> list[str]:
    """What the pinned CRD of `doc`'s kind refuses in it, as `path: message` lines."""
    validator = _validators()[(doc["apiVersion"], doc["kind"])]
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def pinned(api_version: str, kind: str) -> bool:
    """Whether a pinned CRD serves `kind` at `api_version`."""
    return (api_version, kind) in _validators()
