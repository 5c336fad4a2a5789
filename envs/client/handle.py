"""`EnvHandle`: everything a caller needs to talk to one environment server.

    handle = sandbox.handle                       # what a provider hands out
    async with handle.client() as env:            # WebSocket or HTTP session binding, one API
        await env.reset(seed=0)
    status, body = await handle.request("/health")

A handle is the URL (path prefix and query string intact), the transport, the TLS context
that trusts the server (a private CA), and the credentials with the header each one goes
in (`envs.client.credentials`).
"""

from __future__ import annotations

import ssl as ssl_module
from dataclasses import dataclass, field
from typing import Any, Literal

from envs.client.credentials import Credential
from envs.client.http_client import HttpEnvClient, http_request
from envs.client.ws_client import EnvClient

Transport = Literal["websocket", "http"]
"""`websocket`: OpenEnv's /ws session (Unix socket, TCP or TLS). `http`: the HTTP session
binding (POST /reset, /step, /close; GET /state), for ingresses that carry no WebSocket."""


@dataclass(frozen=True, slots=True)
class EnvHandle:
    """How to reach one environment server; never shows its secrets."""

    url: str
    transport: Transport = "websocket"
    ssl: ssl_module.SSLContext | None = field(default=None, repr=False)
    """Trusts the server's certificate over TLS (None: the system's trust store)."""
    credentials: tuple[Credential, ...] = ()

    def __post_init__(self) -> None:
        if self.transport not in ("websocket", "http"):
            raise ValueError(f"unknown transport {self.transport!r}: use 'websocket' or 'http'")
        headers = [c.header.lower() for c in self.credentials]
        if len(set(headers)) != len(headers):
            raise ValueError(f"two credentials for one header in {headers}: give each its own header")

    @classmethod
    def with_token(cls, url: str, token: str | None, **fields: Any) -> EnvHandle:
        """A handle carrying only the env server's token, as a bearer token (the local case)."""
        return cls(url, credentials=(Credential.env_token(token),) if token else (), **fields)

    def client(self, **options: Any) -> EnvClient | HttpEnvClient:
        """A client for this server over the handle's transport; `options` as `EnvClient` takes them."""
        if self.transport == "http":
            return HttpEnvClient(self.url, credentials=self.credentials, ssl=self.ssl, **options)
        return EnvClient(self.url, credentials=self.credentials, ssl=self.ssl, **options)

    async def request(
        self, path: str, *, method: str = "GET", body: Any = None, timeout: float = 5.0
    ) -> tuple[int, Any]:
        """One HTTP request to one of the server's routes (`/health`, `/metrics`, ...)."""
        return await http_request(
            self.url, path, method=method, body=body, credentials=self.credentials, timeout=timeout, ssl=self.ssl
        )

    async def healthy(self, timeout: float = 1.0) -> bool:
        """Whether `/health` answers 200 within `timeout`; an unreachable server is not healthy."""
        try:
            return (await self.request("/health", timeout=timeout))[0] == 200
        except (TimeoutError, OSError, ValueError):
            return False
