"""Default-deny egress for sandbox pods: the policies are valid Kubernetes objects (strict schema,
a pinned version), the namespace check finds every policy that would let a sandbox out, and an
allow-list that names hosts is refused rather than run open."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from hillclimb.provider_errors import UnsupportedPolicy
from providers.contract import EgressPolicy, SandboxSpec
from providers.kubernetes.egress import SANDBOX_ROLE, allow_list, default_deny, egress_findings
from tests.providers.kubernetes.emulator import validate


def valid(manifest: dict[str, Any]) -> dict[str, Any]:
    validate(manifest)
    return manifest


def test_the_default_deny_is_a_valid_policy_that_the_check_accepts() -> None:
    policy = valid(default_deny("sandboxes"))
    assert policy["spec"]["egress"] == [] and "Egress" in policy["spec"]["policyTypes"]
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8000}]
    assert rule["from"][0]["podSelector"] == {"matchLabels": {SANDBOX_ROLE: "rollout-worker"}}
    assert egress_findings([policy]) == []


def _opening(name: str, selector: dict[str, Any]) -> dict[str, Any]:
    return valid(
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": "sandboxes"},
            "spec": {"podSelector": selector, "policyTypes": ["Egress"], "egress": [{}]},
        }
    )


@pytest.mark.parametrize(
    "selector",
    [{}, {"matchLabels": {SANDBOX_ROLE: "sandbox"}}, {"matchLabels": {"hillclimb.dev/run-id": "r1"}}],
    ids=["every pod", "every sandbox", "one run's sandboxes"],
)
def test_a_policy_that_lets_sandboxes_out_is_named(selector: dict[str, Any]) -> None:
    findings = egress_findings([default_deny("sandboxes"), _opening("allow-all-out", selector)])
    assert findings == ["NetworkPolicy allow-all-out allows egress from pods that may be sandboxes"]


def test_policies_for_other_pods_do_not_count() -> None:
    workers = _opening("workers-out", {"matchLabels": {SANDBOX_ROLE: "rollout-worker"}})
    assert egress_findings([default_deny("sandboxes"), workers]) == []


def test_without_the_default_deny_the_namespace_is_refused() -> None:
    ingress_only = copy.deepcopy(default_deny("sandboxes"))
    ingress_only["spec"]["policyTypes"] = ["Ingress"]  # governs ingress only: egress stays open
    for policies in ([], [ingress_only]):
        assert egress_findings(policies) == [
            "no NetworkPolicy denies sandbox pods all egress (the chart's hillclimb-sandboxes-default-deny)"
        ]


def test_an_allow_list_opens_only_its_addresses_for_only_its_pod() -> None:
    spec = SandboxSpec(egress=EgressPolicy(mode="allow_list", allow=("10.1.2.3", "192.168.0.0/16", "2001:db8::/32")))
    policy = valid(allow_list(spec, "hc-abc", "sandboxes"))
    assert policy["spec"]["podSelector"] == {"matchLabels": {"hillclimb.dev/sandbox": "hc-abc"}}
    cidrs = [peer["ipBlock"]["cidr"] for peer in policy["spec"]["egress"][0]["to"]]
    assert cidrs == ["10.1.2.3/32", "192.168.0.0/16", "2001:db8::/32"]
    assert egress_findings([default_deny("sandboxes"), policy]) == []  # the provider's own: not a finding
    assert allow_list(SandboxSpec(), "hc-abc", "sandboxes") is None


def test_an_allow_list_naming_a_host_is_refused_not_run_open() -> None:
    spec = SandboxSpec(egress=EgressPolicy(mode="allow_list", allow=("10.0.0.1", "pypi.org")))
    with pytest.raises(UnsupportedPolicy, match="'pypi.org' is not an IP address or CIDR.*cannot name hosts"):
        allow_list(spec, "hc-abc", "sandboxes")
