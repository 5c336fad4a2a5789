"""Sandboxes from a server-side warm pool: the kubernetes-sigs/agent-sandbox CRDs, for clusters
that run its controller (`extensions.agents.x-k8s.io/v1beta1`).

    SandboxTemplate  hillclimb-<digest>   the sandbox pod (providers.kubernetes.pod), claimable
    SandboxWarmPool  hillclimb-<digest>   `replicas` pods of it started ahead, kept topped up
    SandboxClaim     hc-<name>            one sandbox: the controller binds a warm pod to it;
                                          its shutdown time is the sandbox's TTL

A warm pod exists before anyone asks for a sandbox, so no token Secret can be made for it: its
server is claimable (`--claim-token`), and the provider's `POST /claim` on the bound pod gives
it a token of its own before any agent command can run. The template and pool are named by the
digest of the pod they make, so a spec that needs another pod gets another pool. Egress stays
the chart's: the template leaves NetworkPolicies to it (`Unmanaged`), and its pods carry the
sandbox role the default deny selects.

The run's labels go on the claim's own metadata, which the provider lists and reaps by, and not
on the bound pod (`spec.additionalPodMetadata`): the controller accepts a label there only in a
domain on its allow-list (default `sandbox.users.io`, set by its `allowed-label-domains` file),
and refuses the whole claim otherwise, so `hillclimb.dev/*` labels would leave it never bound.
A claim the controller refuses is reported from its Ready condition, not waited out.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
from typing import Any

from envs.client.http_client import http_request
from hillclimb.errors import HillclimbError
from hillclimb.provider_errors import FatalProviderError, RetryableProviderError, UnsupportedPolicy
from providers.contract import SandboxSpec
from providers.kubernetes.egress import SANDBOX_ROLE
from providers.kubernetes.pod import sandbox_pod

GROUP = "extensions.agents.x-k8s.io"
VERSION = "v1beta1"
API_VERSION = f"{GROUP}/{VERSION}"


def warm_pool_objects(
    spec: SandboxSpec, *, namespace: str, image: str, runtime_class: str | None, replicas: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The SandboxTemplate and SandboxWarmPool `spec`'s sandboxes are claimed from."""
    if spec.egress.mode != "deny_all":
        raise UnsupportedPolicy(
            "a warm pool's pods are started before any spec names its allow-list: use deny_all "
            "egress, or the provider without warm_pool (a pod per sandbox, its own policy)"
        )
    pod = sandbox_pod(
        spec, "", namespace=namespace, image=image, labels={}, runtime_class=runtime_class, claimable=True
    )
    template = {"metadata": {"labels": {SANDBOX_ROLE: "sandbox"}}, "spec": pod["spec"]}
    name = "hillclimb-" + hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:16]
    return (
        {
            "apiVersion": API_VERSION,
            "kind": "SandboxTemplate",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"podTemplate": template, "networkPolicyManagement": "Unmanaged"},
        },
        {
            "apiVersion": API_VERSION,
            "kind": "SandboxWarmPool",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": replicas, "sandboxTemplateRef": {"name": name}},
        },
    )


REFUSED = ("InvalidMetadata", "EnvVarsInjectionRejected")
"""Reasons of a claim's Ready=False condition that retrying will not change (agent-sandbox's
claim controller)."""


def sandbox_claim(name: str, *, namespace: str, warm_pool: str, labels: dict[str, str], ttl_s: float) -> dict[str, Any]:
    """A claim on one warm sandbox, deleted with its sandbox at `ttl_s` from now; `labels` on the
    claim itself (see the module's docstring)."""
    shutdown = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=ttl_s)
    return {
        "apiVersion": API_VERSION,
        "kind": "SandboxClaim",
        "metadata": {"name": name, "namespace": namespace, "labels": {**labels, SANDBOX_ROLE: "sandbox"}},
        "spec": {
            "warmPoolRef": {"name": warm_pool},
            "lifecycle": {"shutdownTime": shutdown.strftime("%Y-%m-%dT%H:%M:%SZ"), "shutdownPolicy": "Delete"},
        },
    }


def bound_address(claim: dict[str, Any]) -> str | None:
    """The bound pod's IP address, once the controller has bound one to the claim."""
    ips = ((claim.get("status") or {}).get("sandbox") or {}).get("podIPs") or []
    return ips[0] if ips else None


def refusal(claim: dict[str, Any]) -> str | None:
    """Why the controller will never bind `claim` (its Ready condition's reason and message), or None."""
    for condition in (claim.get("status") or {}).get("conditions") or []:
        if (
            condition.get("type") == "Ready"
            and condition.get("status") == "False"
            and condition.get("reason") in REFUSED
        ):
            return f"{condition['reason']}: {condition.get('message', '')}"
    return None


def claim_server(url: str, token: str, timeout_s: float = 10.0) -> str:
    """Make `token` the claimable server's at `url` (from a thread: a loop of its own); returns
    the environment it serves ('module:Class')."""
    try:
        status, body = asyncio.run(http_request(url, "/claim", method="POST", token=token, timeout=timeout_s))
    except (OSError, TimeoutError, HillclimbError) as e:
        raise RetryableProviderError(f"claiming the server at {url} failed: {e}") from e
    if status != 200:
        raise FatalProviderError(f"the server at {url} refused the claim: HTTP {status} {body}")
    return str(body.get("env", ""))
