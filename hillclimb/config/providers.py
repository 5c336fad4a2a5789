"""Each sandbox provider's options, as a model: `provider.options` in a run config, `-o KEY=VALUE` on
`hillclimb sandbox`, and the keyword arguments its constructor takes.

    options_model(name) ─► LocalOptions | DockerOptions | KubernetesOptions | AcaOptions
                        ─► a plugin's model, registered by entry point (below)
                        ─► PluginOptions, for a plugin that registers none

A config is checked here when it loads, by name, without importing any provider (or its SDK);
`providers.registry.make_provider` builds a provider from the same model. A provider plugin
registers its model beside its class:

    [project.entry-points."hillclimb.providers"]
    myprovider = "my_package.provider:MyProvider"
    [project.entry-points."hillclimb.provider_options"]
    myprovider = "my_package.options:MyOptions"

and names it as `MyProvider.options_model`. Without one its options pass config load unchecked
and are checked against its constructor's keyword parameters when it is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hillclimb.errors import TargetNotFoundError

__all__ = [
    "BUILTIN_OPTIONS",
    "OPTIONS_GROUP",
    "PROVIDERS_GROUP",
    "AcaOptions",
    "DockerOptions",
    "KubernetesOptions",
    "LocalOptions",
    "PluginOptions",
    "check_pool_source",
    "options_model",
]

PROVIDERS_GROUP = "hillclimb.providers"
"""Entry points naming provider classes: name → 'package.module:Class'."""
OPTIONS_GROUP = "hillclimb.provider_options"
"""Entry points naming their options models: name → 'package.module:Model'."""

SANDBOX_IMAGE = "hillclimb/sandbox:dev"
"""The image `hillclimb image build` makes; Docker's and Kubernetes' default."""


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class LocalOptions(_Options):
    root: str | Path | None = None
    """Directory holding each sandbox's socket, log and work dirs; None: $XDG_RUNTIME_DIR/hillclimb/
    sandboxes, else /tmp/hillclimb-<uid>/sandboxes."""
    isolation: Literal["auto", "namespaces", "none"] = "auto"
    """auto, namespaces: each sandbox in namespaces of its own, refused where the host cannot make
    them; none: plain processes with this user's rights (trusted environments only)."""
    uid_base: int = 200_000
    """First uid of the range sandboxes run under, when run as root."""
    uid_slots: int = 60_000
    """Sandboxes that can exist at once as root: each takes three uids above `uid_base`."""


class DockerOptions(_Options):
    image: str = SANDBOX_IMAGE
    """Image a spec without its own runs."""
    root: str | Path | None = None
    """Host directory of each sandbox's socket dir and labels; None: /tmp/hillclimb-<uid>/docker."""
    client: Any = None
    """A `docker.DockerClient`; None: one from the environment ($DOCKER_HOST), 60 s timeout."""
    runtime: str | None = None
    """Container runtime (e.g. runsc for gVisor); None: the engine's default."""
    check_image: bool = True
    """Refuse an image labelled as built from environment code other than this process's."""


class KubernetesOptions(_Options):
    namespace: str = "hillclimb-sandboxes"
    """Where sandbox pods run: the Helm chart's `sandbox.namespace`."""
    image: str = SANDBOX_IMAGE
    """Image a spec without its own runs, pullable by the cluster."""
    runtime_class: str | None = None
    """RuntimeClass of sandbox pods (gVisor, Kata); None: the cluster's default."""
    kubeconfig: str | None = None
    """Kubeconfig file, from outside a cluster; None with no `context`: in-cluster credentials."""
    context: str | None = None
    """Context of the kubeconfig to use; None: its current one."""
    api_url: str | None = None
    """An API server that takes no credentials (a local proxy, an emulator), instead of either."""
    warm_pool: int | None = Field(default=None, ge=1)
    """Claim sandboxes from a warm pool of this many pods (the agent-sandbox controller's);
    None: a pod per sandbox."""


MAKES_POOLS = ("subscription_id", "resource_group", "environment_id", "location", "image")
"""The ACA options a provider that makes its own session pools needs."""


def check_pool_source(options: Mapping[str, Any]) -> None:
    """Raise ValueError unless `options` name a pool made by hand or everything a pool is made from."""
    if options.get("pool_endpoint"):
        return
    if missing := [key for key in MAKES_POOLS if not options.get(key)]:
        raise ValueError(
            f"the aca provider needs {', '.join(missing)} to make its session pools "
            "(or pool_endpoint, the management endpoint of a pool made by hand)"
        )


class AcaOptions(_Options):
    """Pools made by the provider (`subscription_id` … `image`), or one made by hand (`pool_endpoint`)."""

    subscription_id: str | None = None
    """Azure subscription the pools are made in."""
    resource_group: str | None = None
    """Resource group of the pools the provider makes."""
    environment_id: str | None = None
    """Resource id of a workload-profiles Container Apps environment the pools are made in."""
    location: str | None = None
    """Azure region of the pools, the environment's."""
    image: str | None = None
    """The sandbox image, pulled from `registry_server`."""
    pool_endpoint: str | None = None
    """Management endpoint of a pool made by hand; then no Resource Manager call at all."""
    lifecycle: Literal["timed", "on-exit"] = "timed"
    """timed: a session ends `cooldown_s` after its last request; on-exit: when its server exits,
    at the latest at the spec's time-to-live."""
    cooldown_s: int = Field(default=600, ge=300, le=3600)
    """Seconds of silence after which a timed session ends."""
    ready_sessions: int = Field(default=0, ge=0)
    """Sessions a made pool keeps started ahead of claims."""
    max_concurrent_sessions: int = Field(default=64, ge=1)
    """Sessions a made pool may hold at once."""
    registry_server: str | None = None
    """Registry the image is pulled from by managed identity; None: pulled without credentials."""
    registry_identity: str | None = None
    """Resource id of the managed identity that pulls the image; None: the pool's system identity."""
    pool_prefix: str = Field(default="hillclimb", pattern=r"^[a-z][a-z0-9]{2,46}$")
    """Names of the pools the provider makes start with it."""
    data_plane_api_version: str = "2025-02-02-preview"
    """api-version of the pools' session requests."""
    ca_file: str | None = None
    """A private CA's certificate for the pools' endpoints; None: the system's."""
    arm_polling_s: float = Field(default=5.0, ge=0)
    """Seconds between polls of a pool being made, when Resource Manager does not say."""
    credential: Any = None
    """An azure-core TokenCredential, or 'module:attr' naming a callable that returns one;
    None: DefaultAzureCredential."""
    management_transport: Any = None
    """An HTTP transport for Resource Manager (tests); None: the SDK's."""
    data_transport: Any = None
    """An HTTP transport for the pools' data plane (tests); None: the SDK's."""

    @model_validator(mode="after")
    def _pool_source(self) -> Self:
        check_pool_source(dict(self))
        return self


class PluginOptions(BaseModel):
    """A plugin's options when it registers no model: any keys, checked against its constructor
    only when `providers.registry` builds it."""

    model_config = ConfigDict(extra="allow")


BUILTIN_OPTIONS: dict[str, type[BaseModel]] = {
    "local": LocalOptions,
    "docker": DockerOptions,
    "kubernetes": KubernetesOptions,
    "aca": AcaOptions,
}


def options_model(name: str) -> type[BaseModel]:
    """The options model of the provider `name`: built-in, registered by a plugin, or `PluginOptions`
    for a plugin that registers none. Raises `TargetNotFoundError` naming the known providers."""
    if name in BUILTIN_OPTIONS:  # plugins may add names, not shadow built-ins
        return BUILTIN_OPTIONS[name]
    registered = {ep.name: ep for ep in entry_points(group=OPTIONS_GROUP)}
    if name in registered:
        return _load(registered[name])
    providers = {ep.name for ep in entry_points(group=PROVIDERS_GROUP)}
    if name in providers:
        return PluginOptions
    known = sorted({*BUILTIN_OPTIONS, *registered, *providers})
    raise TargetNotFoundError(f"unknown sandbox provider {name!r}; available: {', '.join(known)}")


def _load(entry: Any) -> type[BaseModel]:
    try:
        model = entry.load()
    except ImportError as e:
        raise TargetNotFoundError(
            f"provider {entry.name!r}: its options model {entry.value} cannot be imported: {e}"
        ) from e
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise TargetNotFoundError(f"provider {entry.name!r}: {entry.value} is not a pydantic model")
    return model
