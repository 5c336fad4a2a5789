"""The sandbox pod and its token Secret: valid Kubernetes objects (strict schema, a pinned
version), held to the Pod Security Standards' restricted profile, the token only where the
server runs, the agent's work only where its commands run."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from hillclimb.provider_errors import BadSpecError
from providers.contract import Resources, SandboxSpec
from providers.kubernetes.pod import AGENT_UID, SERVER_UID, VERIFIER_UID, pod_name, sandbox_pod, token_secret
from tests.providers.kubernetes.emulator import validate

RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def _pod(spec: SandboxSpec | None = None, **options: Any) -> dict[str, Any]:
    spec = spec or SandboxSpec(env="terminal", run_id="r1")
    labels = spec.all_labels(created_at=1_800_000_000)
    pod = sandbox_pod(
        spec, pod_name(spec), namespace="sandboxes", image="hillclimb/sandbox:dev", labels=labels, **options
    )
    validate(pod)
    return pod


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """The Pod Security Standards' baseline and restricted rules (v1.33), checked field by field."""
    spec, found = pod["spec"], []
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            found.append(field)
    found += [f"volume {v['name']}" for v in spec.get("volumes", []) if not set(v) - {"name"} <= RESTRICTED_VOLUMES]
    pod_context = spec.get("securityContext", {})
    for container in spec["containers"] + spec.get("initContainers", []):
        context = {**pod_context, **container.get("securityContext", {})}
        name = container["name"]
        if context.get("privileged"):
            found.append(f"{name}: privileged")
        if context.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: privilege escalation not disallowed")
        if context.get("runAsNonRoot") is not True or context.get("runAsUser") == 0:
            found.append(f"{name}: may run as root")
        if context.get("seccompProfile", {}).get("type") not in ("RuntimeDefault", "Localhost"):
            found.append(f"{name}: no seccomp profile")
        caps = context.get("capabilities", {})
        if caps.get("drop") != ["ALL"] or set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            found.append(f"{name}: capabilities {caps}")
        if any(port.get("hostPort") for port in container.get("ports", [])):
            found.append(f"{name}: host port")
    return found


def test_the_pod_is_valid_and_restricted() -> None:
    for pod in (_pod(), _pod(runtime_class="gvisor")):
        assert restricted_violations(pod) == []
        spec = pod["spec"]
        assert spec["automountServiceAccountToken"] is False and spec["enableServiceLinks"] is False
        assert all(c["securityContext"]["readOnlyRootFilesystem"] for c in spec["containers"])
    assert _pod(runtime_class="gvisor")["spec"]["runtimeClassName"] == "gvisor"


def test_the_checker_catches_what_restricted_forbids() -> None:
    pod = _pod()
    pod["spec"]["containers"][1]["securityContext"]["capabilities"]["add"] = ["SETUID"]
    pod["spec"]["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    pod["spec"]["hostPID"] = True
    assert restricted_violations(pod) == [
        "hostPID",
        "volume host",
        "agent: capabilities {'drop': ['ALL'], 'add': ['SETUID']}",
    ]


def _container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in pod["spec"]["containers"] if c["name"] == name)


def test_three_uids_the_token_with_the_server_only_the_work_with_the_agent_only() -> None:
    pod = _pod()
    server, agent, verifier = (_container(pod, name) for name in ("server", "agent", "verifier"))
    uids = [c["securityContext"]["runAsUser"] for c in (server, agent, verifier)]
    assert uids == [SERVER_UID, AGENT_UID, VERIFIER_UID] and len(set(uids)) == 3
    mounts = {c["name"]: {m["name"]: m["mountPath"] for m in c["volumeMounts"]} for c in (server, agent, verifier)}
    assert "token" in mounts["server"] and "token" not in mounts["agent"] and "token" not in mounts["verifier"]
    assert mounts["agent"]["work"] == "/work" and "work" not in mounts["server"] and "work" not in mounts["verifier"]
    assert mounts["verifier"]["verify"] == "/verify" and "verify" not in mounts["agent"]  # the copies: its own
    assert mounts["server"]["warden"] == mounts["agent"]["warden"] == mounts["verifier"]["warden"]  # all they share
    assert mounts["server"]["server-tmp"] == mounts["agent"]["agent-tmp"] == mounts["verifier"]["verifier-tmp"]
    assert agent["args"] == ["--listen", "/run/warden/warden.sock", "--server-uid", str(SERVER_UID)]
    assert verifier["args"] == ["--listen", "/run/warden/verifier.sock", "--server-uid", str(SERVER_UID)]
    environment = {e["name"]: e["value"] for e in server["env"]}
    assert environment["HILLCLIMB_WARDEN_SOCKET"] == "/run/warden/warden.sock"
    assert environment["HILLCLIMB_VERIFIER_WARDEN_SOCKET"] == "/run/warden/verifier.sock"
    assert environment["HILLCLIMB_AGENT_UID"] == str(AGENT_UID)
    assert environment["HILLCLIMB_VERIFIER_UID"] == str(VERIFIER_UID)
    assert not pod["spec"].get("shareProcessNamespace")  # the agent cannot even see the verifier's processes


def test_limits_ttl_and_labels_follow_the_spec() -> None:
    spec = SandboxSpec(env="terminal", resources=Resources(cpu=1.5, memory_mb=2048, disk_mb=256), ttl_s=900)
    pod = _pod(spec)
    agent = _container(pod, "agent")
    assert agent["resources"]["limits"] == {"cpu": "1.5", "memory": "2048Mi", "ephemeral-storage": "256Mi"}
    assert {v["name"]: v["emptyDir"] for v in pod["spec"]["volumes"] if "emptyDir" in v}["work"] == {
        "medium": "Memory",
        "sizeLimit": "256Mi",
    }
    assert pod["spec"]["activeDeadlineSeconds"] == 900
    labels = pod["metadata"]["labels"]
    assert labels["hillclimb.dev/role"] == "sandbox" and labels["hillclimb.dev/sandbox"] == pod["metadata"]["name"]
    assert labels["hillclimb.dev/expires-at"] == str(1_800_000_000 + 900)


def test_one_name_per_idempotency_key() -> None:
    keyed = SandboxSpec(idempotency_key="run/task-3/attempt-0")
    assert pod_name(keyed) == pod_name(keyed) == "hc-" + keyed.key_digest
    assert pod_name(SandboxSpec()) != pod_name(SandboxSpec())


def test_the_token_is_in_the_secret_only() -> None:
    token = "s3cret-token-value"
    pod = _pod()
    secret = token_secret(pod["metadata"]["name"], token, namespace="sandboxes", labels={}, pod_uid="u-1")
    validate(secret)
    assert token not in json.dumps(pod) and token not in json.dumps(secret["metadata"])
    assert base64.b64decode(secret["data"]["token"]).decode() == token
    assert secret["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Pod", "name": pod["metadata"]["name"], "uid": "u-1"}
    ]
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == "token"]
    assert volume["secret"] == {"secretName": secret["metadata"]["name"], "defaultMode": 0o440}


def test_a_custom_command_is_refused_by_name() -> None:
    with pytest.raises(BadSpecError, match="custom command is not supported"):
        _pod(SandboxSpec(command=("sleep", "1")))
