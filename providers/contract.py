"""The sandbox-provider contract: specs in, isolated environment servers out.

    SandboxSpec ─create─► Sandbox ─.handle─► EnvHandle (URL, transport, TLS, credentials)
                             └─wait_ready─► serving ─destroy─► gone

A provider starts one environment server per sandbox, reachable only through its
`Sandbox.handle`: everything outside `providers/` connects through it, never by building
its own URL or headers. Egress is deny-all unless the spec asks for an
allow-list, and a provider that cannot enforce what is asked raises `UnsupportedPolicy`.
Every sandbox carries its run id, owner and expiry as labels so that a reaper in another
process can find and remove what a crashed driver left behind. A provider is built from its
options model and says where its runs beat (`SandboxProvider.options_model`, `.run_liveness`).
What the built-in providers share to keep these promises is `providers.toolkit`.
"""

from __future__ import annotations

import hashlib
import re
import socket
import ssl
import time
from datetime import datetime
from typing import ClassVar, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from envs.client.credentials import Credential
from envs.client.handle import EnvHandle, Transport
from envs.wire.http import AUTHORIZATION
from providers.liveness import RunLiveness

LABEL_PREFIX = "hillclimb.dev/"
LABEL_RUN = LABEL_PREFIX + "run-id"
LABEL_OWNER = LABEL_PREFIX + "owner"
LABEL_CREATED = LABEL_PREFIX + "created-at"
LABEL_EXPIRES = LABEL_PREFIX + "expires-at"
LABEL_KEY = LABEL_PREFIX + "key"
LABEL_ENV = LABEL_PREFIX + "env"
LABEL_HOST = LABEL_PREFIX + "host"
"""The host whose driver created the sandbox: a reaper there may ask whether that run still lives."""

_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


def label_value(text: str) -> str:
    """`text` made a valid label value: allowed characters, at most 63, alphanumeric ends."""
    return re.sub(r"[^A-Za-z0-9-_.]", "_", text)[-63:].strip("_.-") or "unknown"


def host_label() -> str:
    """This machine's name as a label value."""
    return label_value(socket.gethostname())


class Resources(BaseModel):
    """Limits of one sandbox; every provider enforces them (the local one with cgroups or rlimits)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpu: float = Field(default=1.0, gt=0, le=64)
    """CPU cores (fractions allowed)."""
    memory_mb: int = Field(default=1024, ge=64, le=1024 * 1024)
    """Memory limit in MiB; exceeding it kills the sandbox's process."""
    pids: int = Field(default=256, ge=8, le=65536)
    """Maximum number of processes and threads inside the sandbox."""
    disk_mb: int = Field(default=1024, ge=16)
    """Size of each writable mount (the work directory, /tmp): tmpfs, so in memory, never on the
    host's disk; and the largest file a process may write."""


class EgressPolicy(BaseModel):
    """Outbound network policy. The default, `deny_all`, gives the sandbox no route out at all."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["deny_all", "allow_list"] = "deny_all"
    allow: tuple[str, ...] = ()
    """Hosts or CIDRs reachable under `allow_list`; must be empty under `deny_all`."""

    @field_validator("allow")
    @classmethod
    def _no_wildcards(cls, allow: tuple[str, ...]) -> tuple[str, ...]:
        for entry in allow:
            if entry in ("*", "0.0.0.0/0", "::/0"):
                raise ValueError(f"egress allow entry {entry!r} would allow everything; list hosts explicitly")
        return allow


class SandboxSpec(BaseModel):
    """What to start. `env` names the environment the sandbox serves (see `envs.authoring.registry`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    env: str = "toy_terminal"
    """Environment target served inside the sandbox: a built-in name or `package.module:Class`."""
    image: str | None = None
    """Container image (Docker, Kubernetes); None means the provider's default sandbox image."""
    command: tuple[str, ...] | None = None
    """Replaces the default server command; it must serve on `$HILLCLIMB_ENV_SOCKET`, with the
    bearer token read from `$HILLCLIMB_TOKEN_FILE`."""
    resources: Resources = Resources()
    egress: EgressPolicy = EgressPolicy()
    labels: dict[str, str] = Field(default_factory=dict)
    """Free-form labels; `run_id` and `owner` are added as `hillclimb.dev/run-id` and `hillclimb.dev/owner`."""
    run_id: str = "adhoc"
    owner: str = "hillclimb"
    ttl_s: float = Field(default=3600.0, gt=0, le=7 * 24 * 3600)
    """Hard time-to-live in seconds: the provider (or a reaper) destroys the sandbox after it."""
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=256)
    """Creating twice with the same key returns the same sandbox, never two."""
    max_sessions: int = Field(default=64, ge=1)
    """Concurrent sessions the sandbox's server accepts (1 for environments that cannot share)."""
    env_vars: dict[str, str] = Field(default_factory=dict)

    @field_validator("labels")
    @classmethod
    def _valid_labels(cls, labels: dict[str, str]) -> dict[str, str]:
        for key, value in labels.items():
            if not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(value):
                raise ValueError(
                    f"label {key}={value!r} is not a valid label (Kubernetes rules: ≤63 chars, [A-Za-z0-9-_.])"
                )
        return labels

    @field_validator("run_id", "owner")
    @classmethod
    def _label_safe(cls, value: str) -> str:
        if not value or not _LABEL_VALUE.match(value):
            raise ValueError(f"{value!r} must be 1-63 characters of [A-Za-z0-9-_.], starting and ending alphanumeric")
        return value

    def all_labels(self, created_at: float) -> dict[str, str]:
        """The labels a provider attaches: the user's plus run id, owner, env, expiry and key hash."""
        labels = dict(self.labels)
        labels[LABEL_RUN] = self.run_id
        labels[LABEL_OWNER] = self.owner
        labels[LABEL_HOST] = host_label()
        labels[LABEL_ENV] = label_value(self.env)
        labels[LABEL_CREATED] = str(int(created_at))
        labels[LABEL_EXPIRES] = str(int(created_at + self.ttl_s))
        if self.idempotency_key is not None:
            labels[LABEL_KEY] = self.key_digest
        return labels

    @property
    def key_digest(self) -> str:
        """A short digest of the idempotency key (the key itself may be long or sensitive)."""
        assert self.idempotency_key is not None
        return hashlib.sha256(self.idempotency_key.encode()).hexdigest()[:20]


class Sandbox(BaseModel):
    """A started sandbox. `token` is a secret: it never shows in repr, logs or labels."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    id: str
    endpoint: str
    """URL of the environment server, path prefix and query string included, e.g.
    `unix:///.../env.sock`, `wss://ingress/pool/s1` or `https://pool/env?identifier=s1`."""
    token: SecretStr | None
    """The env server's own token; None when listed from another process that never held it."""
    provider: str
    created_at: datetime
    labels: dict[str, str] = Field(default_factory=dict)
    transport: Transport = "websocket"
    """How an episode reaches the server: a WebSocket, or the HTTP session binding where the
    path to it carries no WebSocket."""
    token_header: str = AUTHORIZATION
    """Where the env server's token goes: `Authorization`, or `Hillclimb-Env-Token` when the
    platform in front takes `Authorization` for its own credential."""
    tls: ssl.SSLContext | None = Field(default=None, exclude=True, repr=False)
    """Trusts the server's (or its ingress's) certificate, e.g. a cluster's private CA."""
    platform_credentials: tuple[Credential, ...] = Field(default=(), exclude=True, repr=False)
    """What the platform in front asks for (an ingress's or a session pool's `Authorization`),
    fixed or refreshing."""

    @property
    def handle(self) -> EnvHandle:
        """What a caller connects through: the endpoint with its transport, TLS and credentials."""
        secret = self.secret()
        env_token = (Credential.env_token(secret, header=self.token_header),) if secret else ()
        return EnvHandle(self.endpoint, self.transport, self.tls, self.platform_credentials + env_token)

    @property
    def expires_at(self) -> float | None:
        raw = self.labels.get(LABEL_EXPIRES)
        return float(raw) if raw else None

    def expired(self, now: float | None = None) -> bool:
        expires = self.expires_at
        return expires is not None and (now or time.time()) >= expires

    @property
    def run_id(self) -> str | None:
        return self.labels.get(LABEL_RUN)

    def secret(self) -> str | None:
        return self.token.get_secret_value() if self.token is not None else None


@runtime_checkable
class SandboxProvider(Protocol):
    """An async sandbox backend. Blocking SDK calls run in threads, never on the event loop."""

    name: str
    options_model: ClassVar[type[BaseModel]]
    """What it is built from: its constructor's keyword arguments, checked (`extra="forbid"`). The
    same model is registered under the provider's name (`hillclimb.config.providers.options_model`),
    so a run config is checked when it loads, before any provider is imported."""
    run_liveness: RunLiveness | None
    """Where its runs beat and its reapers ask whether a run lives: None for this host's beat
    files (`orchestrator.heartbeats`), else its own (Kubernetes: a Lease per process)."""

    async def create(self, spec: SandboxSpec) -> Sandbox:
        """Start a sandbox; idempotent under `spec.idempotency_key`. Does not wait for readiness."""
        ...

    async def wait_ready(self, sandbox: Sandbox, timeout_s: float = 60.0) -> None:
        """Return once the sandbox's server answers its health check; raise `ReadyTimeoutError` otherwise
        (`providers.readiness.wait_healthy` is the poll every built-in provider uses)."""
        ...

    async def destroy(self, sandbox_id: str) -> None:
        """Stop and remove the sandbox and everything it holds; a no-op if it is already gone."""
        ...

    async def log_tail(self, sandbox_id: str) -> str:
        """The last lines of the sandbox's server log, '' when there are none (or it is gone).
        Read before a failed sandbox is destroyed, so that its end is not lost with it."""
        ...

    async def list(self, selector: dict[str, str] | None = None) -> list[Sandbox]:
        """Sandboxes of this provider whose labels include every `selector` item."""
        ...

    async def close(self) -> None:
        """Release the provider's own resources (clients, helper processes)."""
        ...
