"""What a session pool is made of, and how sessions are named: pure functions, no Azure calls.

    SandboxSpec ─► PoolSettings (the pool-level fields: image, command, resources, env)
                ─► pool name  hillclimb<digest>        (^[a-z][a-z0-9]*$, 3–63 characters)
                ─► the ARM body of Microsoft.App/sessionPools: CustomContainer, Dynamic,
                   EgressDisabled, a lifecycle, scale, registry pull by managed identity, tags

On ACA a session's image, command, resources and environment belong to its pool: a spec that
differs in any of them selects (or creates) another pool, named by their digest, never a pool
that would silently ignore them. A session is named by an identifier the provider chooses (4–128
characters): `hc-<escaped run id>-<random>`, so that listing sessions tells whose run each is.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from hillclimb.provider_errors import BadSpecError, UnsupportedPolicy
from providers.contract import LABEL_CREATED, LABEL_EXPIRES, LABEL_KEY, SandboxSpec

TARGET_PORT = 8000
POOL_PREFIX = "hillclimb"
SERVER_ENTRYPOINT = ("/opt/hillclimb/bin/python", "-P", "-m", "envs")
"""The sandbox image's env server (docker/Dockerfile), started as root to be the warden."""
MANAGED_TAG = "hillclimb-managed"
DIGEST_TAG = "hillclimb-pool-digest"
_IDENTIFIER = re.compile(r"^hc-((?:[A-Za-z0-9-]|\|[ud])+)-([0-9a-f]{16})$")
_ESCAPES = {"_": "|u", ".": "|d"}
"""Run ids may hold '_' and '.', which identifiers may not; '|' never occurs in a run id."""


class PoolSettings(BaseModel):
    """Everything that makes two sandboxes need different pools."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    environment_id: str
    location: str
    image: str
    env: str
    cpu: float
    memory_gib: float
    max_sessions_per_server: int
    ttl_s: float
    env_vars: tuple[tuple[str, str], ...] = ()
    lifecycle: Literal["timed", "on-exit"] = "timed"
    cooldown_s: int = 600
    ready_sessions: int = 0
    max_concurrent_sessions: int = 64
    registry_server: str | None = None
    registry_identity: str | None = None
    """A user-assigned managed identity's resource id that pulls the image (or 'system')."""

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(), sort_keys=True).encode()).hexdigest()[:16]

    def name(self, prefix: str = POOL_PREFIX) -> str:
        return f"{prefix}{self.digest()}"


def pool_settings(spec: SandboxSpec, **pool: Any) -> PoolSettings:
    """The pool `spec` needs, with the provider's pool-level options; what ACA cannot do is refused."""
    refuse_what_aca_cannot_do(spec)
    return PoolSettings(
        image=spec.image or pool.pop("image"),
        env=spec.env,
        cpu=spec.resources.cpu,
        memory_gib=spec.resources.memory_mb / 1024,
        max_sessions_per_server=spec.max_sessions,
        ttl_s=spec.ttl_s,
        env_vars=tuple(sorted(spec.env_vars.items())),
        **{k: v for k, v in pool.items() if k != "image"},
    )


def refuse_what_aca_cannot_do(spec: SandboxSpec) -> None:
    if spec.egress.mode != "deny_all":
        raise UnsupportedPolicy(
            "ACA session pools have no egress allow-list: egress is disabled for the whole pool "
            f"(asked for {spec.egress.mode}; use the docker or kubernetes provider for an allow-list)"
        )
    if spec.command is not None:
        raise BadSpecError("the aca provider runs the image's env server; a custom command is not supported")


def server_args(settings: PoolSettings) -> list[str]:
    """The env server's flags in every session: reached over TCP, its token set by the provider's claim."""
    return [
        settings.env,
        "--host", "0.0.0.0",
        "--port", str(TARGET_PORT),
        "--claim-token",
        "--max-sessions", str(settings.max_sessions_per_server),
        "--ttl", f"{settings.ttl_s:g}",
        "--harden",
        "--server-user", "10001:10001",
        "--agent-user", "10002:10002",
        "--verifier-user", "10004:10004",
    ]  # fmt: skip


def pool_tags(spec: SandboxSpec) -> dict[str, str]:
    """The labels of the run that makes the pool, as ARM tags ('/' is not allowed in a tag name);
    the per-sandbox ones (times, keys) stay off a pool that outlives them."""
    per_sandbox = (LABEL_CREATED, LABEL_EXPIRES, LABEL_KEY)
    return {k.replace("/", "-"): v for k, v in spec.all_labels(0).items() if k not in per_sandbox}


def session_pool_body(settings: PoolSettings, tags: dict[str, str]) -> dict[str, Any]:
    """The JSON a PUT of Microsoft.App/sessionPools carries for `settings`."""
    if settings.lifecycle == "timed":
        lifecycle = {"lifecycleType": "Timed", "cooldownPeriodInSeconds": settings.cooldown_s}
    else:
        lifecycle = {"lifecycleType": "OnContainerExit", "maxAlivePeriodInSeconds": int(settings.ttl_s)}
    container = {
        "name": "env-server",
        "image": settings.image,
        "command": list(SERVER_ENTRYPOINT),
        "args": server_args(settings),
        "env": [{"name": k, "value": v} for k, v in settings.env_vars],
        "resources": {"cpu": settings.cpu, "memory": f"{settings.memory_gib:g}Gi"},
    }
    template: dict[str, Any] = {"containers": [container], "ingress": {"targetPort": TARGET_PORT}}
    body: dict[str, Any] = {
        "location": settings.location,
        "tags": {**tags, MANAGED_TAG: "true", DIGEST_TAG: settings.digest()},
        "properties": {
            "environmentId": settings.environment_id,
            "containerType": "CustomContainer",
            "poolManagementType": "Dynamic",
            "scaleConfiguration": {
                "maxConcurrentSessions": settings.max_concurrent_sessions,
                "readySessionInstances": settings.ready_sessions,
            },
            "dynamicPoolConfiguration": {"lifecycleConfiguration": lifecycle},
            "customContainerTemplate": template,
            "sessionNetworkConfiguration": {"status": "EgressDisabled"},
        },
    }
    if settings.registry_server:
        identity = settings.registry_identity or "system"
        template["registryCredentials"] = {"server": settings.registry_server, "identity": identity}
        if identity == "system":
            body["identity"] = {"type": "SystemAssigned"}
        else:
            body["identity"] = {"type": "UserAssigned", "userAssignedIdentities": {identity: {}}}
    return body


def new_identifier(run_id: str, suffix: str | None = None) -> str:
    """A session's identifier: the run it belongs to, and 64 random bits no other caller can guess
    (or `suffix`, 16 hex digits of an idempotency key's digest)."""
    escaped = "".join(_ESCAPES.get(c, c) for c in run_id)
    identifier = f"hc-{escaped}-{suffix or secrets.token_hex(8)}"
    if len(identifier) > 128:
        raise BadSpecError(f"run id {run_id!r} is too long for an ACA session identifier (128 characters)")
    return identifier


def run_of(identifier: str) -> str | None:
    """The run id an identifier of ours carries; None for a session someone else made."""
    match = _IDENTIFIER.match(identifier)
    if match is None:
        return None
    escaped = match.group(1)
    for plain, escape in _ESCAPES.items():
        escaped = escaped.replace(escape, plain)
    return escaped
