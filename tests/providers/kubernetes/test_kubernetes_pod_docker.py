"""The sandbox pod's three containers, started on this machine's Docker engine with the pod's own
settings (image, command, uid, read-only root, no capability, memory-backed mounts, the token
file mounted into the server only, one network namespace), serve a terminal episode: the pod
spec works, not only validates. No kubelet here: Docker stands in for the container runtime."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from providers.contract import SandboxSpec
from providers.kubernetes.pod import SERVER_CODE, TOKEN_DIR, TOKEN_GROUP, WORKDIR, pod_name, sandbox_pod

pytestmark = [pytest.mark.docker, pytest.mark.root]

IMAGE = "hillclimb/sandbox:dev"
REPO = Path(__file__).resolve().parents[3]

PROBE = (
    f"id -u; ps -e -o uid= | sort -u | tr -d ' ' | tr '\\n' ' '; echo; cat {SERVER_CODE}/pyvenv.cfg; ls {TOKEN_DIR};"
    f" echo hi > {WORKDIR}/mine && cat {WORKDIR}/mine"
)
CLIENT = """
import asyncio, json, sys
from envs.client.ws_client import EnvClient

async def main():
    async with EnvClient("ws://127.0.0.1:8000/ws", token=sys.argv[1], connect_timeout_s=60) as env:
        prompt = (await env.reset(task_id="create-hello")).observation["prompt"]
        seen = (await env.step({"command": sys.argv[2]})).observation["output"]
        await env.step({"command": "echo 'hello world' > hello.txt"})
        done = await env.step({"command": "submit"})
    print(json.dumps({"prompt": prompt, "seen": seen, "reward": done.reward}))

asyncio.run(main())
"""
OPENENV_CLIENT = """
import asyncio, json, sys
from envs.client.ws_client import EnvClient

async def main():
    async with EnvClient("ws://127.0.0.1:8000/ws", token=sys.argv[1], connect_timeout_s=60) as env:
        await env.reset()
        steps = [await env.step({"message": message}) for message in ("hi", "there")]
    print(json.dumps({"echoed": [s.observation["echoed"] for s in steps], "done": steps[-1].done}))

asyncio.run(main())
"""


def _docker_options(container: dict[str, Any], host_dirs: dict[str, str]) -> dict[str, Any]:
    """The pod's container as `docker run` options. Each volume is a host directory bind-mounted
    where the pod mounts it: an emptyDir's is world-writable (0777, as the kubelet makes one;
    a Docker tmpfs over an image directory would keep that directory's mode instead), the
    Secret's holds the token file as the kubelet writes it under the pod's fsGroup."""
    context = container["securityContext"]
    binds = {
        host_dirs[m["name"]]: {"bind": m["mountPath"], "mode": "ro" if m.get("readOnly") else "rw"}
        for m in container["volumeMounts"]
    }
    return {
        "entrypoint": container["command"],
        "command": container["args"],
        "user": f"{context['runAsUser']}:{context['runAsGroup']}",
        "group_add": [str(TOKEN_GROUP)],  # the pod's fsGroup, which the kubelet gives every container
        "read_only": context["readOnlyRootFilesystem"],
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "environment": {e["name"]: e["value"] for e in container.get("env", [])},
        "working_dir": container.get("workingDir"),
        "volumes": binds,
        "mem_limit": container["resources"]["limits"]["memory"].replace("Mi", "m"),
        "labels": {"hillclimb.dev/test": "kubernetes-pod"},
        "detach": True,
    }


PodStarter = Callable[[str, str], tuple[Any, str]]


@pytest.fixture
def start_pod(docker_engine: None) -> Iterator[PodStarter]:
    """Starts the sandbox pod of an environment and image on Docker: its server container and token."""
    import docker

    client = docker.from_env()
    started: list[Any] = []
    with tempfile.TemporaryDirectory(prefix="hc-pod-") as home:

        def start(env: str, image: str) -> tuple[Any, str]:
            spec = SandboxSpec(env=env, run_id="k8s-pod")
            pod = sandbox_pod(spec, pod_name(spec), namespace="sandboxes", image=image, labels={})
            token = secrets.token_urlsafe(24)
            host_dirs = {}
            for volume in pod["spec"]["volumes"]:
                host_dirs[volume["name"]] = path = tempfile.mkdtemp(prefix=volume["name"], dir=home)
                os.chmod(path, 0o755 if "secret" in volume else 0o777)
            token_file = os.path.join(host_dirs["token"], "token")
            with open(token_file, "w") as f:
                f.write(token)
            os.chown(token_file, 0, TOKEN_GROUP)  # as the kubelet writes a Secret under the pod's fsGroup
            os.chmod(token_file, 0o440)
            server = None
            for container in pod["spec"]["containers"]:  # the server first: the others join its network namespace
                network = "none" if server is None else f"container:{server.id}"
                options = _docker_options(container, host_dirs)
                started.append(client.containers.run(image, network_mode=network, **options))
                server = server or started[-1]
            return server, token

        try:
            yield start
        finally:
            for container in reversed(started):
                container.remove(force=True)
            client.close()


def _in_pod_network(server: Any, script: str, *args: str) -> dict[str, Any]:
    """Run `script` in the pod's network namespace (the server at 127.0.0.1:8000); its last line, as JSON."""
    server.reload()
    in_pod_network = ["nsenter", "-t", str(server.attrs["State"]["Pid"]), "-n"]
    done = subprocess.run(
        [*in_pod_network, sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    logs = server.logs(tail=30).decode(errors="replace")
    assert done.returncode == 0, f"{done.stderr[-1500:]}\nserver log:\n{logs}"
    return json.loads(done.stdout.splitlines()[-1])


def test_the_pods_containers_serve_a_terminal_episode(start_pod: PodStarter) -> None:
    server, token = start_pod("terminal", IMAGE)
    result = _in_pod_network(server, CLIENT, token, PROBE)
    seen = result["seen"]
    assert seen.splitlines()[0] == "10002", seen  # the agent's commands: the agent container's uid
    assert seen.splitlines()[1].split() == ["10002"], seen  # its own processes only: no server, no verifier
    assert f"{SERVER_CODE}/pyvenv.cfg: Permission denied" in seen  # the server's code and task suites
    assert TOKEN_DIR in seen and "No such file" in seen  # the token is not in its container
    assert seen.rstrip().endswith("hi")  # its work dir is its own to write
    assert result["reward"] == 1.0  # the verifier ran, through the verifier container's warden, and scored


def test_the_pod_of_an_openenv_environment_serves_an_episode(start_pod: PodStarter, openenv_image: str) -> None:
    """An environment on OpenEnv's own base classes, from an image `hillclimb image build --env` made:
    its server container works in the server's own directory (OpenEnv's import reads `.env` there)."""
    server, token = start_pod("shoutpkg.server.app", openenv_image)
    assert _in_pod_network(server, OPENENV_CLIENT, token) == {"echoed": ["HI", "THERE"], "done": True}
