"""Default-deny egress for sandbox pods, as NetworkPolicies.

    default_deny(namespace)            the policy the chart installs: sandbox pods send nothing
                                       and take only the rollout workers' connections on the port
    egress_findings(policies)          what keeps a namespace's policies from doing that, in
                                       words (the provider refuses to start sandboxes there)
    allow_list(spec, pod, namespace)   one pod's exceptions, for `EgressPolicy(mode="allow_list")`

A NetworkPolicy names peers by pod, namespace or IP block, never by host name: an allow-list
entry that is a host name cannot be enforced here and is refused with `UnsupportedPolicy`
(resolve it yourself and list the addresses, or use an egress proxy). Policies are additive,
so one pod's allow-list opens only what it lists, only for that pod.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from hillclimb.provider_errors import UnsupportedPolicy
from providers.contract import LABEL_PREFIX, SandboxSpec

SANDBOX_ROLE = LABEL_PREFIX + "role"
"""The label every sandbox pod carries with value `sandbox`; rollout workers carry `rollout-worker`."""
SANDBOX_NAME = LABEL_PREFIX + "sandbox"
"""Names one sandbox's pod (its allow-list policy selects by it)."""
SERVER_PORT = 8000
DEFAULT_DENY_NAME = "hillclimb-sandboxes-default-deny"

_SANDBOXES = {"matchLabels": {SANDBOX_ROLE: "sandbox"}}


def default_deny(namespace: str) -> dict[str, Any]:
    """Sandbox pods: no egress at all; ingress only from rollout-worker pods, on the server's port."""
    workers = {"podSelector": {"matchLabels": {SANDBOX_ROLE: "rollout-worker"}}, "namespaceSelector": {}}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": DEFAULT_DENY_NAME, "namespace": namespace},
        "spec": {
            "podSelector": _SANDBOXES,
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [workers], "ports": [{"protocol": "TCP", "port": SERVER_PORT}]}],
            "egress": [],
        },
    }


def egress_findings(policies: list[dict[str, Any]]) -> list[str]:
    """What stands between the namespace's NetworkPolicies and default-deny egress for sandbox
    pods, in words; empty when egress is denied. Policies are additive, so besides a policy that
    selects every sandbox pod and allows no egress, none that may select a sandbox pod may allow
    any (a pod's own allow-list policy, made by the provider, aside)."""
    findings = []
    if not any(_selects_all_sandboxes(p) and _governs_egress(p) and not _spec(p).get("egress") for p in policies):
        findings.append(f"no NetworkPolicy denies sandbox pods all egress (the chart's {DEFAULT_DENY_NAME})")
    for policy in policies:
        own = SANDBOX_NAME in (_spec(policy).get("podSelector") or {}).get("matchLabels", {})
        if not own and _may_select_a_sandbox(policy) and _governs_egress(policy) and _spec(policy).get("egress"):
            findings.append(f"NetworkPolicy {policy['metadata']['name']} allows egress from pods that may be sandboxes")
    return findings


def _spec(policy: dict[str, Any]) -> dict[str, Any]:
    return policy.get("spec") or {}


def _governs_egress(policy: dict[str, Any]) -> bool:
    return "Egress" in (_spec(policy).get("policyTypes") or [])


def _selects_all_sandboxes(policy: dict[str, Any]) -> bool:
    selector = _spec(policy).get("podSelector") or {}
    return not selector or selector == _SANDBOXES


def _may_select_a_sandbox(policy: dict[str, Any]) -> bool:
    """False only for a selector that requires a role other than `sandbox`: any other label or
    expression may match some sandbox pod."""
    selector = _spec(policy).get("podSelector") or {}
    role = (selector.get("matchLabels") or {}).get(SANDBOX_ROLE)
    return role is None or role == "sandbox"


def allow_list(spec: SandboxSpec, pod: str, namespace: str) -> dict[str, Any] | None:
    """The policy that opens `spec.egress.allow` for one pod, or None under deny-all."""
    if spec.egress.mode == "deny_all":
        return None
    blocks = []
    for entry in spec.egress.allow:
        try:
            blocks.append(str(ipaddress.ip_network(entry, strict=False)))
        except ValueError:
            raise UnsupportedPolicy(
                f"egress allow entry {entry!r} is not an IP address or CIDR: a Kubernetes NetworkPolicy "
                "cannot name hosts; list the addresses it resolves to, or route through an egress proxy"
            ) from None
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": f"{pod}-egress", "namespace": namespace, "labels": {SANDBOX_NAME: pod}},
        "spec": {
            "podSelector": {"matchLabels": {SANDBOX_NAME: pod}},
            "policyTypes": ["Egress"],
            "egress": [{"to": [{"ipBlock": {"cidr": block}} for block in blocks]}],
        },
    }
