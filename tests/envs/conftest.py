"""Shared fixtures: serve an environment class on a real loopback socket for one test."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from envs.client.http_client import HttpEnvClient
from envs.client.ws_client import EnvClient
from envs.server.env_server import EnvServer, ServerConfig
from envs.server.runtime import EnvRuntime


@dataclass(frozen=True)
class Running:
    """A running `EnvServer` with its URL (`ws://` or `unix://`) and token."""

    server: EnvServer
    url: str
    token: str | None

    def client(self, **kwargs: Any) -> EnvClient:
        return EnvClient(self.url, **self._defaults(kwargs))

    def http_client(self, **kwargs: Any) -> HttpEnvClient:
        """A client of the HTTP session binding on the same server."""
        return HttpEnvClient(self.url, **self._defaults(kwargs))

    def _defaults(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        return {"token": self.token, "connect_timeout_s": 2.0, "message_timeout_s": 5.0, **kwargs}


@pytest.fixture
def calls() -> Iterator[type]:
    """The sample environments' factory/close counters, zeroed for this test."""
    from sample_envs import Calls

    Calls.reset()
    yield Calls
    Calls.gate.set()  # never leave a session thread blocked past its test


@pytest.fixture
async def start_server(calls: type) -> AsyncIterator[Callable[..., Awaitable[Running]]]:
    """`await start_server(EnvClass, factory=None, token="test-token", unix=False, **ServerConfig)`.

    Tears down every server it started, then fails the test if it left asyncio tasks
    pending (a session task, a reaper, a client's helper): leaks there become hangs in
    production.
    """
    servers: list[EnvServer] = []
    with tempfile.TemporaryDirectory(prefix="hc-") as short_dir:  # Unix socket paths max out near 100 bytes

        async def start(
            env_cls: type,
            *,
            factory: Callable[[], Any] | None = None,
            token: str | None = "test-token",
            unix: bool = False,
            claimable: bool = False,
            **config: Any,
        ) -> Running:
            runtime = EnvRuntime(env_cls, factory=factory)
            server = EnvServer(runtime, ServerConfig(**config), token=token, claimable=claimable)
            servers.append(server)
            if unix:
                path = os.path.join(short_dir, f"env{len(servers)}.sock")
                await server.start_unix(path)
                return Running(server, f"unix://{path}", token)
            port = await server.start_tcp()
            return Running(server, f"ws://127.0.0.1:{port}/ws", token)

        yield start
        for server in servers:
            await server.close()
    await asyncio.sleep(0)
    pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
    assert not pending, f"the test left tasks pending: {pending}"
