"""Sandboxes claimed from an agent-sandbox warm pool, against the emulated API server. The
controller's part is played here: it binds each new SandboxClaim to a warm "pod", a real env
server started claimable on a loopback address of its own, port 8000, as a warm pod's would be."""

from __future__ import annotations

import asyncio
import datetime
import itertools
from collections.abc import AsyncIterator
from typing import Any

import kmock
import pytest

from envs.authoring.registry import resolve_env_class
from envs.server.env_server import EnvServer
from envs.server.runtime import EnvRuntime
from hillclimb.provider_errors import BadSpecError, UnsupportedPolicy
from providers.contract import EgressPolicy, SandboxSpec
from providers.kubernetes.egress import SERVER_PORT
from providers.kubernetes.provider import KubernetesProvider
from providers.kubernetes.warm_pool import GROUP, VERSION
from tests.providers.kubernetes.custom_resources import validate_custom
from tests.providers.kubernetes.emulator import ClusterEmulator
from tests.providers.kubernetes.test_kubernetes_pod import restricted_violations

_ADDRESSES = (f"127.0.{i}.{j}" for i, j in itertools.product(range(90, 100), range(2, 250)))


def _stored(api: ClusterEmulator, plural: str) -> dict[str, dict[str, Any]]:
    resource = kmock.resource(GROUP, VERSION, plural)
    return {key[2]: dict(obj.raw) for key, obj in api.objects.items() if key[0] == resource and not obj.deleted}


class Controller:
    """Binds every unbound claim to a warm server serving `env` (what the pool's pods run)."""

    def __init__(self, api: ClusterEmulator, env: str = "toy_terminal") -> None:
        self.api, self.env = api, env
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
                    server = EnvServer(EnvRuntime(resolve_env_class(self.env)), token=None, claimable=True)
                    address = next(_ADDRESSES)
                    await server.start_tcp(address, SERVER_PORT)
                    self.servers.append(server)
                    stored.patch({"status": {"sandbox": {"name": key[2], "podIPs": [address]}}})
            await asyncio.sleep(0.02)


@pytest.fixture
async def warm(api: ClusterEmulator, provider: KubernetesProvider) -> AsyncIterator[KubernetesProvider]:
    provider.warm_pool = 3
    yield provider


async def test_a_claimed_sandbox_serves_its_claimants_episode(warm: KubernetesProvider, api: ClusterEmulator) -> None:
    async with Controller(api):
        sandbox = await warm.create(SandboxSpec(env="toy_terminal", run_id="r1", ttl_s=600))
        await warm.wait_ready(sandbox)
        async with sandbox.handle.client() as env:
            await env.reset()
            assert "app.log" in str((await env.step({"command": "ls"})).observation)
        second = await warm.create(SandboxSpec(env="toy_terminal", run_id="r1", ttl_s=600))
        templates, pools, claims = (_stored(api, p) for p in ("sandboxtemplates", "sandboxwarmpools", "sandboxclaims"))
        assert len(templates) == len(pools) == 1 and set(claims) == {sandbox.id, second.id}  # one pool, made once
        for doc in [*templates.values(), *pools.values(), *claims.values()]:
            validate_custom(doc)
        (template,) = templates.values()
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "p"},
            "spec": template["spec"]["podTemplate"]["spec"],
        }
        assert restricted_violations(pod) == []
        server_args = pod["spec"]["containers"][0]["args"]
        assert "--claim-token" in server_args and "--token-file" not in server_args
        assert template["spec"]["networkPolicyManagement"] == "Unmanaged"  # the chart's default deny holds
        claim = claims[sandbox.id]
        assert claim["spec"]["warmPoolRef"]["name"] == template["metadata"]["name"]
        shutdown = datetime.datetime.fromisoformat(claim["spec"]["lifecycle"]["shutdownTime"].replace("Z", "+00:00"))
        assert 590 <= (shutdown - datetime.datetime.now(datetime.UTC)).total_seconds() <= 600
        assert claim["spec"]["additionalPodMetadata"]["labels"]["hillclimb.dev/run-id"] == "r1"
        assert sandbox.secret() not in str(claims)
        assert {s.id for s in await warm.list({"hillclimb.dev/run-id": "r1"})} == {sandbox.id, second.id}
        await warm.destroy(sandbox.id)
        await warm.destroy(sandbox.id)  # a no-op the second time
        assert set(_stored(api, "sandboxclaims")) == {second.id}


async def test_a_pool_serving_another_environment_is_refused(warm: KubernetesProvider, api: ClusterEmulator) -> None:
    async with Controller(api, env="probe"):
        with pytest.raises(BadSpecError, match="serves envs.builtin.probe"):
            await warm.create(SandboxSpec(env="toy_terminal"))
    assert _stored(api, "sandboxclaims") == {}  # the claim went with the refusal


async def test_an_allow_list_is_refused_for_pods_made_before_the_spec(warm: KubernetesProvider) -> None:
    with pytest.raises(UnsupportedPolicy, match="started before any spec names its allow-list"):
        await warm.create(SandboxSpec(egress=EgressPolicy(mode="allow_list", allow=("10.0.0.0/8",))))
