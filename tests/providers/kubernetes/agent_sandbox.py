"""The agent-sandbox claim controller's part, played against the emulated API server: it binds
each new SandboxClaim to a warm "pod" (a real env server started claimable on a loopback address
of its own, port 8000, as a warm pod's would be), after the check the real controller makes first.

That check is kubernetes-sigs/agent-sandbox's `validateAdditionalPodMetadata`
(extensions/controllers/sandboxclaim_controller.go, the same at v0.5.6 and at HEAD 2fd412d5): a
label in `spec.additionalPodMetadata` must be a qualified name whose domain is on the
controller's allow-list (`/etc/sandbox-config/allowed-label-domains`; `sandbox.users.io` when that
file is absent, the default install) or a subdomain of one, with a valid value; an annotation
may not be in a Kubernetes or agent-sandbox domain. A claim that fails it is never bound: its
Ready condition turns False with reason `InvalidMetadata` and the controller's message.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import re
from typing import Any

import kmock

from envs.authoring.registry import resolve_env_class
from envs.server.env_server import EnvServer
from envs.server.runtime import EnvRuntime
from providers.kubernetes.egress import SERVER_PORT
from providers.kubernetes.warm_pool import GROUP, VERSION
from tests.providers.kubernetes.emulator import ClusterEmulator

DEFAULT_LABEL_DOMAINS = ("sandbox.users.io",)
"""The controller's allow-list when no config file names one ("Secure default fallback")."""
_RESTRICTED_DOMAINS = ("kubernetes.io", "k8s.io", "agents.x-k8s.io")
_EXEMPT_ANNOTATIONS = ("cluster-autoscaler.kubernetes.io/safe-to-evict",)
# k8s.io/apimachinery's IsQualifiedName and IsValidLabelValue.
_NAME = r"([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]"
_DNS_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_QUALIFIED = re.compile(rf"^({_DNS_SUBDOMAIN}/)?{_NAME}$")
_LABEL_VALUE = re.compile(rf"^({_NAME})?$")
_ADDRESSES = (f"127.0.{i}.{j}" for i, j in itertools.product(range(90, 100), range(2, 250)))


def _in(domain: str, domains: tuple[str, ...]) -> bool:
    return any(domain == d or domain.endswith("." + d) for d in domains)


def _metadata_error(key: str, value: str, *, label: bool, allowed: tuple[str, ...]) -> str | None:
    kind = "label" if label else "annotation"
    prefix, _, name = key.rpartition("/")
    if not _QUALIFIED.match(key) or (prefix and len(prefix) > 253) or len(name) > 63:
        return f"invalid {kind} key: {key!r}"
    if label and key.lower() == "app" and value.lower() == "sandbox-router":
        return f"restricted system label value: {key!r}={value!r} is not allowed in AdditionalPodMetadata"
    domain = prefix.lower()
    if label and not prefix:
        return f"label {key!r} must have a domain prefix (e.g. 'sandbox.users.io/my-label')"
    if label and not _in(domain, allowed):
        return f"label domain {domain!r} is not in the allowlist"
    if not label and prefix and _in(domain, _RESTRICTED_DOMAINS) and key not in _EXEMPT_ANNOTATIONS:
        return f"restricted system domain: {key!r} is not allowed in AdditionalPodMetadata"
    if label and not (_LABEL_VALUE.match(value) and len(value) <= 63):
        return f"invalid label value: {value!r}"
    return None


def claim_metadata_error(claim: dict[str, Any], allowed: tuple[str, ...] = DEFAULT_LABEL_DOMAINS) -> str | None:
    """Why the controller refuses `claim`'s additionalPodMetadata (its first finding), or None."""
    metadata = claim.get("spec", {}).get("additionalPodMetadata") or {}
    for mapping, label in ((metadata.get("labels") or {}, True), (metadata.get("annotations") or {}, False)):
        for key, value in mapping.items():
            if error := _metadata_error(key, value, label=label, allowed=allowed):
                kind = "label" if label else "annotation"
                return f"invalid additionalPodMetadata: failed to validate {kind} {key!r}: {error}"
    return None


class Controller:
    """Binds every unbound claim the default controller accepts to a warm server serving `env`
    (what the pool's pods run); refuses the others as it does."""

    def __init__(
        self, api: ClusterEmulator, env: str = "toy_terminal", allowed: tuple[str, ...] = DEFAULT_LABEL_DOMAINS
    ) -> None:
        self.api, self.env, self.allowed = api, env, allowed
        self.servers: list[EnvServer] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Controller:
        self._task = asyncio.create_task(self._bind_forever())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        for server in self.servers:
            await server.close()

    async def _bind_forever(self) -> None:
        resource = kmock.resource(GROUP, VERSION, "sandboxclaims")
        while True:
            for key, stored in list(self.api.objects.items()):
                if key[0] == resource and not stored.deleted and "status" not in stored.raw:
                    stored.patch({"status": await self._reconcile(key[2], dict(stored.raw))})
            await asyncio.sleep(0.02)

    async def _reconcile(self, name: str, claim: dict[str, Any]) -> dict[str, Any]:
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if error := claim_metadata_error(claim, self.allowed):
            refused = {"type": "Ready", "status": "False", "reason": "InvalidMetadata", "message": error}
            return {"conditions": [refused | {"lastTransitionTime": now}]}
        server = EnvServer(EnvRuntime(resolve_env_class(self.env)), token=None, claimable=True)
        address = next(_ADDRESSES)
        await server.start_tcp(address, SERVER_PORT)
        self.servers.append(server)
        ready = {"type": "Ready", "status": "True", "reason": "SandboxReady", "message": "", "lastTransitionTime": now}
        return {"conditions": [ready], "sandbox": {"name": name, "podIPs": [address]}}
