"""The Helm chart's sandbox-side values, as pydantic models: what the Kubernetes provider must
agree with (its default namespace comes from here). The whole chart's values, and the schema
generated from them, are `orchestrator.chart_values`."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"


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
