"""One episode over every transport a handle can name, through `EnvHandle.client()` alone:
WebSocket over a Unix socket, TCP and TLS from a private CA, and the HTTP session binding
through an ingress that adds a path prefix, takes `Authorization` for its own (rotating)
token and routes by `?identifier=` — the env server's token then in its own header."""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sample_envs import CounterEnv

from envs.client.credentials import Credential
from envs.client.handle import EnvHandle
from envs.server.env_server import EnvServer
from envs.server.runtime import EnvRuntime
from envs.wire.http import ENV_TOKEN_HEADER
from hillclimb.errors import AuthenticationError, ConnectionLostError
from tests.ingress import SessionPoolIngress
from tests.private_ca import PrivateCA

TOKEN = "env-token-for-transports"


@dataclass
class Served:
    handles: dict[str, EnvHandle]
    ingress: SessionPoolIngress


@pytest.fixture
async def served(tmp_path: Path, calls: type) -> AsyncIterator[Served]:
    ca = PrivateCA(tmp_path)
    server = EnvServer(EnvRuntime(CounterEnv), token=TOKEN)
    ingress = SessionPoolIngress(tls=ca.server_context())
    with tempfile.TemporaryDirectory(prefix="hc-") as short:
        socket_path = os.path.join(short, "env.sock")
        await server.start_unix(socket_path)
        tcp = await server.start_tcp()
        tls = await server.start_tcp(ssl=ca.server_context())
        ingress.routes["sandbox-1"] = socket_path
        await ingress.start()
        platform = Credential(ingress.current_token)  # asked again for every request: rotation is seen
        env_token = Credential.env_token(TOKEN, header=ENV_TOKEN_HEADER)
        handles = {
            "websocket-unix": EnvHandle.with_token(f"unix://{socket_path}", TOKEN),
            "websocket-tcp": EnvHandle.with_token(f"ws://127.0.0.1:{tcp}/ws", TOKEN),
            "websocket-tls": EnvHandle.with_token(f"wss://127.0.0.1:{tls}", TOKEN, ssl=ca.client_context()),
            "http-ingress": EnvHandle(
                ingress.url("sandbox-1"), "http", ca.client_context(), credentials=(platform, env_token)
            ),
        }
        yield Served(handles, ingress)
        await ingress.close()
        await server.close()


@pytest.mark.parametrize("name", ["websocket-unix", "websocket-tcp", "websocket-tls", "http-ingress"])
async def test_an_episode_runs_end_to_end_over_each_transport(served: Served, name: str) -> None:
    handle = served.handles[name]
    assert await handle.healthy()
    async with handle.client() as env:
        assert (await env.reset(seed=1, start=2)).observation["total"] == 2
        assert (await env.step({"amount": 3})).observation["total"] == 5
        assert (await env.call_tool("add", amount=4)).text == '{"total": 9}'
        assert (await env.state())["total"] == 9
    status, metrics = await handle.request("/metrics")
    assert status == 200 and 'hillclimb_env_calls_total{call="step"} 1' in metrics


async def test_the_env_token_travels_in_its_own_header_and_no_websocket_gets_through(served: Served) -> None:
    handle = served.handles["http-ingress"]
    async with handle.client() as env:
        await env.reset()
        await env.step({"amount": 1})
    forwarded = [headers for _, headers in served.ingress.forwarded]
    assert forwarded and all(h.get(ENV_TOKEN_HEADER.lower()) == TOKEN for h in forwarded)
    # Through an HTTP-only ingress a WebSocket cannot even start: the binding is the way in.
    with pytest.raises(ConnectionLostError, match="upgrade refused: HTTP 400"):
        await EnvHandle(handle.url, "websocket", handle.ssl, handle.credentials).client().connect()


async def test_a_rotated_platform_token_is_picked_up_mid_episode(served: Served) -> None:
    handle, ingress = served.handles["http-ingress"], served.ingress
    fixed = Credential(ingress.current_token())  # read once: goes stale at the next rotation
    stale = EnvHandle(handle.url, "http", handle.ssl, (fixed, handle.credentials[1]))
    async with handle.client() as env, stale.client() as old:
        await env.reset()
        await old.reset()
        ingress.rotate()
        assert (await env.step({"amount": 2})).observation["total"] == 2
        with pytest.raises(AuthenticationError, match="platform token"):
            await old.step({"amount": 2})
    assert 401 in ingress.refused
