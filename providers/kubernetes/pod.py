"""One sandbox as Kubernetes objects: a pod of three containers, and the Secret holding its token.

    pod hc-<name>                            (Pod Security Standards: restricted)
      ├─ server    uid 10001   python -m envs <env> --port 8000 --token-file /run/hillclimb-token/token
      │                        the token Secret (this container only), a /tmp of its own
      ├─ agent     uid 10002   python3 -m envs.sandbox.warden --listen /run/warden/warden.sock --server-uid 10001
      │                        the agent's work dir /work, a /tmp of its own
      └─ verifier  uid 10004   python3 -m envs.sandbox.warden --listen /run/warden/verifier.sock --server-uid 10001
                               the verifier's copies /verify, a /tmp of its own; the wardens' socket dir, shared

The restricted profile lets no container keep a capability, so no process of the pod may
switch uids: the agent's commands, and what decides a reward (`envs.sandbox.verification`), get uids of
their own by running in containers of their own, each under a warden (`envs.sandbox.warden`'s listen
mode) that the server reaches over a socket in a directory they share; each container has its
own process namespace, so the agent cannot even see the verifier's processes. The server's
code and task suites (`/opt/hillclimb`, group 10001) stay out of both's reach, and the token is
mounted only where the server runs. Every
writable mount is memory-backed and size-limited; the pod dies at the sandbox's TTL
(`activeDeadlineSeconds`) even if nobody destroys it. No service-account token, no service
links, seccomp `RuntimeDefault`, and an optional runtime class (gVisor, Kata) for a kernel
boundary. The Secret is owned by the pod, so Kubernetes removes it with the pod.
"""

from __future__ import annotations

import base64
import os
from typing import Any

from hillclimb.provider_errors import BadSpecError
from providers.contract import SandboxSpec
from providers.kubernetes.egress import SANDBOX_NAME, SANDBOX_ROLE, SERVER_PORT

SERVER_UID = 10001
AGENT_UID = 10002
VERIFIER_UID = 10004
TOKEN_GROUP = 10003
"""The pod's fsGroup: the token file's group. It owns nothing else in the image, so that the
agent's container, which the kubelet gives this group too, gains no file by it."""
TOKEN_DIR = "/run/hillclimb-token"
WARDEN_DIR = "/run/warden"
WORKDIR = "/work"
VERIFY_DIR = "/verify"
SERVER_CODE = "/opt/hillclimb"
SERVER_HOME = "/run/hillclimb"
"""The server's working directory, its own in the image (never the agent's `WORKDIR`: libraries read
files such as `.env` from the working directory)."""
"""The image's env server and task suites (group 10001 only)."""
WARDEN_CODE = "/opt/hillclimb-warden"
"""The warden's own modules, readable by every uid (the image copies them there): the agent's
and the verifier's containers cannot read `SERVER_CODE`."""
SERVER_RESOURCES = {"cpu": "500m", "memory": "512Mi", "ephemeral-storage": "64Mi"}
"""The env server's own share; the sandbox's `Resources` bound the agent's container, where its
commands run, and the verifier's, which copies what they wrote."""
_SERVER_TMP = "64Mi"


def pod_name(spec: SandboxSpec) -> str:
    """`hc-` and the idempotency key's digest (one pod per key: a second create finds the first),
    else random."""
    return "hc-" + (spec.key_digest if spec.idempotency_key is not None else os.urandom(10).hex())


def _hardened(uid: int) -> dict[str, Any]:
    return {
        "runAsUser": uid,
        "runAsGroup": uid,
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _memory_dir(name: str, size: str) -> dict[str, Any]:
    return {"name": name, "emptyDir": {"medium": "Memory", "sizeLimit": size}}


def _warden_container(
    role: str, uid: int, socket: str, workdir: str, *, image: str, env: list[dict[str, str]], limits: dict[str, str]
) -> dict[str, Any]:
    """A role's container: its warden, under its uid, with a memory-backed work dir and /tmp of its own."""
    volume = "work" if role == "agent" else "verify"
    return {
        "name": role,
        "image": image,
        "command": ["python3", "-P", "-m", "envs.sandbox.warden"],
        "args": ["--listen", f"{WARDEN_DIR}/{socket}", "--server-uid", str(SERVER_UID)],
        "env": [*env, {"name": "PYTHONPATH", "value": WARDEN_CODE}],
        "workingDir": workdir,
        "resources": {"limits": limits, "requests": limits},
        "securityContext": _hardened(uid),
        "volumeMounts": [
            {"name": "warden", "mountPath": WARDEN_DIR},
            {"name": volume, "mountPath": workdir},
            {"name": f"{role}-tmp", "mountPath": "/tmp"},
        ],
    }


def sandbox_pod(
    spec: SandboxSpec,
    name: str,
    *,
    namespace: str,
    image: str,
    labels: dict[str, str],
    runtime_class: str | None = None,
    claimable: bool = False,
) -> dict[str, Any]:
    """The pod serving `spec` (its labels already include the run's, from `SandboxSpec.all_labels`).
    `claimable`: a warm pool's pod, made before any sandbox is asked for: no token Secret (its
    server takes the token of the first `POST /claim`) and no deadline of its own (the claim's
    shutdown time is the sandbox's TTL)."""
    if spec.command is not None:
        raise BadSpecError("the Kubernetes provider runs the image's env server; a custom command is not supported")
    limits = spec.resources
    agent_limits = {
        "cpu": f"{limits.cpu:g}",
        "memory": f"{limits.memory_mb}Mi",
        "ephemeral-storage": f"{limits.disk_mb}Mi",
    }
    env = [{"name": key, "value": value} for key, value in sorted(spec.env_vars.items())]
    server = {
        "name": "server",
        "image": image,
        "command": [f"{SERVER_CODE}/bin/python", "-P", "-m", "envs", spec.env],
        "workingDir": SERVER_HOME,
        "args": [
            "--host",
            "0.0.0.0",
            "--port",
            str(SERVER_PORT),
            "--max-sessions",
            str(spec.max_sessions),
            *(["--claim-token"] if claimable else ["--token-file", f"{TOKEN_DIR}/token", "--ttl", f"{spec.ttl_s:g}"]),
        ],  # fmt: skip
        "env": [
            *env,
            {"name": "HILLCLIMB_WARDEN_SOCKET", "value": f"{WARDEN_DIR}/warden.sock"},
            {"name": "HILLCLIMB_VERIFIER_WARDEN_SOCKET", "value": f"{WARDEN_DIR}/verifier.sock"},
            {"name": "HILLCLIMB_AGENT_UID", "value": str(AGENT_UID)},
            {"name": "HILLCLIMB_VERIFIER_UID", "value": str(VERIFIER_UID)},
            {"name": "HILLCLIMB_VERIFY_DIR", "value": VERIFY_DIR},
            {"name": "HILLCLIMB_WORKDIR", "value": WORKDIR},
        ],
        "ports": [{"name": "env", "containerPort": SERVER_PORT, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/health", "port": SERVER_PORT}, "periodSeconds": 1},
        "resources": {"limits": SERVER_RESOURCES, "requests": SERVER_RESOURCES},
        "securityContext": _hardened(SERVER_UID),
        "volumeMounts": [
            *([] if claimable else [{"name": "token", "mountPath": TOKEN_DIR, "readOnly": True}]),
            {"name": "warden", "mountPath": WARDEN_DIR},
            {"name": "server-tmp", "mountPath": "/tmp"},
        ],
    }
    role_limits = {"image": image, "env": env, "limits": agent_limits}
    agent = _warden_container("agent", AGENT_UID, "warden.sock", WORKDIR, **role_limits)
    verifier = _warden_container("verifier", VERIFIER_UID, "verifier.sock", VERIFY_DIR, **role_limits)
    pod_spec: dict[str, Any] = {
        "containers": [server, agent, verifier],
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": 5,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "fsGroup": TOKEN_GROUP,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumes": [
            *(
                []
                if claimable
                else [{"name": "token", "secret": {"secretName": f"{name}-token", "defaultMode": 0o440}}]
            ),
            _memory_dir("warden", "1Mi"),
            _memory_dir("work", f"{limits.disk_mb}Mi"),
            _memory_dir("agent-tmp", f"{limits.disk_mb}Mi"),
            _memory_dir("verify", f"{limits.disk_mb}Mi"),
            _memory_dir("verifier-tmp", f"{limits.disk_mb}Mi"),
            _memory_dir("server-tmp", _SERVER_TMP),
        ],
    }
    if not claimable:
        pod_spec["activeDeadlineSeconds"] = max(int(spec.ttl_s), 1)
    if runtime_class is not None:
        pod_spec["runtimeClassName"] = runtime_class
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {**labels, SANDBOX_ROLE: "sandbox", SANDBOX_NAME: name},
        },
        "spec": pod_spec,
    }


def token_secret(name: str, token: str, *, namespace: str, labels: dict[str, str], pod_uid: str) -> dict[str, Any]:
    """The pod's token as a Secret it owns (removed with it); mounted as a file, never an env var."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": f"{name}-token",
            "namespace": namespace,
            "labels": {**labels, SANDBOX_NAME: name},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": name, "uid": pod_uid}],
        },
        "data": {"token": base64.b64encode(token.encode()).decode()},
    }
