"""`EnvHandle`: everything a caller needs to talk to one environment server.

    handle = sandbox.handle                       # what a provider hands out
    async with handle.client() as env:            # WebSocket or HTTP session binding, one API
        await env.reset(seed=0)
    status, body = await handle.request("/health")

A handle is the URL (path prefix and query string intact), the transport, the TLS context
that trusts the server (a private CA), and the credentials with the header each one goes
in: the env server's token in `Authorization`, or in `Hillclimb-Env-Token` when a platform
in front (an ingress, a session pool) takes `Authorization` for its own token. A credential
is a fixed secret or a function that returns a fresh one (e.g. `azure-identity`'s bearer
token provider); it is asked again for every connection and every HTTP request, so a
token that expires is replaced without the caller noticing.
"""

from __future__ import annotations

import inspect
import ssl as ssl_module
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from envs.client import EnvClient
    from envs.http_client import HttpEnvClient

Transport = Literal["websocket", "http"]
"""`websocket`: OpenEnv's /ws session (Unix socket, TCP or TLS). `http`: the HTTP session
binding (POST /reset, /step, /close; GET /state), for ingresses that carry no WebSocket."""

AUTHORIZATION = "Authorization"
ENV_TOKEN_HEADER = "Hillclimb-Env-Token"
"""Where the env server's token goes when `Authorization` belongs to the platform in front."""
SESSION_HEADER = "Hillclimb-Session"
"""Names the HTTP binding's session: returned by POST /reset, sent with every later request."""

SecretSource = str | Callable[[], str | Awaitable[str]]


@dataclass(frozen=True, slots=True)
class Credential:
    """A secret and the header it travels in. `scheme` prefixes the value (`Bearer`), or not ("")."""

    source: SecretSource = field(repr=False)
    header: str = AUTHORIZATION
    scheme: str = "Bearer"

    def __post_init__(self) -> None:
        if isinstance(self.source, str) and not self.source:
            raise ValueError(f"the credential for {self.header} is empty")
        if not self.header or any(c in self.header for c in ": \r\n"):
            raise ValueError(f"{self.header!r} is not a header name")

    @classmethod
    def env_token(cls, token: str, *, header: str = AUTHORIZATION) -> Credential:
        """The env server's own token, in `Authorization` (as a bearer token) or in `header`."""
        return cls(token, header, "Bearer" if header.lower() == AUTHORIZATION.lower() else "")

    async def render(self) -> tuple[str, str]:
        """(header, value), with a refreshed secret when the source is a function."""
        secret = self.source
        if not isinstance(secret, str):
            secret = secret()
            if inspect.isawaitable(secret):
                secret = await secret
        if not isinstance(secret, str) or not secret or any(c in secret for c in "\r\n"):
            raise ValueError(f"the credential source for {self.header} returned no usable secret")
        return self.header, f"{self.scheme} {secret}" if self.scheme else secret


async def render_headers(credentials: tuple[Credential, ...]) -> list[tuple[str, str]]:
    return [await credential.render() for credential in credentials]


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
            from envs.http_client import HttpEnvClient

            return HttpEnvClient(self.url, credentials=self.credentials, ssl=self.ssl, **options)
        from envs.client import EnvClient

        return EnvClient(self.url, credentials=self.credentials, ssl=self.ssl, **options)

    async def request(
        self, path: str, *, method: str = "GET", body: Any = None, timeout: float = 5.0
    ) -> tuple[int, Any]:
        """One HTTP request to one of the server's routes (`/health`, `/metrics`, ...)."""
        from envs.http_client import http_request

        return await http_request(
            self.url, path, method=method, body=body, credentials=self.credentials, timeout=timeout, ssl=self.ssl
        )

    async def healthy(self, timeout: float = 1.0) -> bool:
        """Whether `/health` answers 200 within `timeout`; an unreachable server is not healthy."""
        try:
            return (await self.request("/health", timeout=timeout))[0] == 200
        except (TimeoutError, OSError, ValueError):
            return False
