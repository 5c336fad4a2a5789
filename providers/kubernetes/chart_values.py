"""The Helm chart's values as pydantic models: the one source of `helm/hillclimb/values.schema.json`.

    python -m providers.kubernetes.chart_values > helm/hillclimb/values.schema.json

Helm checks every install's values against that schema, so a misspelt key or a namespace
Kubernetes would refuse is reported by `helm install` itself; a test fails when the file and
these models drift apart.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"


class _Values(BaseModel):
    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, use_attribute_docstrings=True
    )


class SandboxValues(_Values):
    namespace: str = Field(default="hillclimb-sandboxes", pattern=DNS_LABEL)
    """Where sandbox pods run: restricted pod security, all egress denied. The provider's
    `namespace` option must name the same."""


class ServiceAccountValues(_Values):
    name: str = Field(default="hillclimb-rollout", pattern=DNS_LABEL)
    """The rollout workers' identity, in the release's namespace."""


class ChartValues(_Values):
    sandboxes: SandboxValues = SandboxValues()
    service_account: ServiceAccountValues = ServiceAccountValues()


def values_schema() -> dict[str, Any]:
    """The JSON schema Helm validates values with (field docs become descriptions)."""
    schema = ChartValues.model_json_schema(by_alias=True)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


if __name__ == "__main__":
    print(json.dumps(values_schema(), indent=2))
