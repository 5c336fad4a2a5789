"""A test ingress in the manner of a session pool's front door, in front of real env servers.

    client ─HTTPS (private CA)─► /pool/envs/<route>?identifier=<id>
                                 Authorization: Bearer <platform token>      (checked, then dropped)
                                 Hillclimb-Env-Token: <env token>            (passed on)
           ─────────────────────► the sandbox's server at /<route>, over its Unix socket

It carries plain HTTP only (a WebSocket upgrade is refused), routes by `?identifier=`,
needs its path prefix, and takes only the platform's current token: `rotate()` issues a
new one and refuses the old, as an expiring Entra token would be. Everything it passed on
is recorded in `forwarded`, so a test can see which headers reached the env server.
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
from urllib.parse import parse_qs, urlsplit

from envs.client.base import Endpoint
from envs.client.credentials import Credential
from envs.client.unix_socket import connect_unix
from envs.wire import http
from envs.wire.http import ENV_TOKEN_HEADER
from providers.contract import Sandbox, SandboxSpec
from providers.local import LocalProvider
from providers.readiness import READY_TIMEOUT_S, wait_healthy

_MAX_BODY = 64 << 20  # what one request may carry through the ingress


class SessionPoolIngress:
    def __init__(self, *, prefix: str = "/pool/envs", tls: ssl.SSLContext | None = None) -> None:
        self.prefix = prefix
        self._tls = tls
        self.routes: dict[str, str] = {}
        """identifier → the upstream server's Unix socket path."""
        self.forwarded: list[tuple[str, dict[str, str]]] = []
        """(request target, headers) of each request passed upstream."""
        self.refused: list[int] = []
        self._generations = itertools.count(1)
        self.token = "platform-0"
        self._server: asyncio.Server | None = None
        self._handlers: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self.port = 0

    def rotate(self) -> None:
        """Issue a new platform token; the old one is refused from now on."""
        self.token = f"platform-{next(self._generations)}"

    def current_token(self) -> str:
        """The credential source a client refreshes from (what a token provider would return)."""
        return self.token

    def url(self, identifier: str) -> str:
        scheme = "https" if self._tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}{self.prefix}?identifier={identifier}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self._tls)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            # Kept-alive connections and requests in flight end too, at once: a TLS close would wait
            # for the peer's close_notify, past the end of the test's event loop.
            for handler, writer in list(self._handlers.items()):
                writer.transport.abort()
                handler.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers[handler] = writer
        requests = http.RequestReader(lambda request: None, max_body_bytes=_MAX_BODY)
        try:
            while data := await reader.read(65536):
                for request in requests.feed(data):
                    writer.write(await self._answer(request))
                    await writer.drain()
                    if not request.keep_alive:
                        return
        except (ConnectionError, ssl.SSLError):
            return
        finally:
            self._handlers.pop(handler, None)
            writer.close()

    async def _answer(self, request: http.Request) -> bytes:
        parts = urlsplit(request.target)
        identifier = (parse_qs(parts.query).get("identifier") or [""])[0]
        if "upgrade" in request.headers:
            return self._refuse(400, "this ingress carries plain HTTP only")
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return self._refuse(401, "ingress: missing or expired platform token")
        if not parts.path.startswith(self.prefix + "/") or identifier not in self.routes:
            return self._refuse(404, f"ingress: no route for {parts.path} ({identifier or 'no identifier'})")
        route = parts.path.removeprefix(self.prefix)
        passed = {k: v for k, v in request.headers.items() if k not in ("authorization", "host", "connection")}
        self.forwarded.append((route, passed))
        return await forward(self.routes[identifier], request.method, route, passed, request.body)

    def _refuse(self, status: int, why: str) -> bytes:
        self.refused.append(status)
        return http.render_response(status, why.encode(), {"Content-Type": "text/plain"})


async def forward(socket_path: str, method: str, route: str, headers: dict[str, str], body: bytes) -> bytes:
    """One request to the server on `socket_path`, its whole reply (a 502 if it hung up)."""
    reader, writer = await asyncio.open_unix_connection(sock=await connect_unix(socket_path))
    try:
        lines = [f"{method} {route} HTTP/1.1", "Host: upstream", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        reply = await reader.read()
    finally:
        writer.close()
    return reply or http.render_response(502, b"ingress: the sandbox hung up")


class IngressProvider:
    """A local provider's sandboxes handed out as a remote provider would: reachable only through
    the ingress (HTTP session binding, TLS from a private CA, the platform's rotating token, the
    env token in its own header). What the conformance kit and the episode loop see of it is
    only its `Sandbox.handle`."""

    name = "ingress"
    run_liveness = None

    def __init__(self, inner: LocalProvider, ingress: SessionPoolIngress, ca: ssl.SSLContext) -> None:
        self.inner = inner
        self.ingress = ingress
        self._ca = ca

    def _exposed(self, sandbox: Sandbox) -> Sandbox:
        socket_path = Endpoint.parse(sandbox.endpoint).uds
        assert socket_path is not None
        self.ingress.routes[sandbox.id] = socket_path
        return sandbox.model_copy(
            update={
                "endpoint": self.ingress.url(sandbox.id),
                "provider": self.name,
                "transport": "http",
                "token_header": ENV_TOKEN_HEADER,
                "tls": self._ca,
                "platform_credentials": (Credential(self.ingress.current_token),),
            }
        )

    async def create(self, spec: SandboxSpec) -> Sandbox:
        return self._exposed(await self.inner.create(spec))

    async def wait_ready(self, sandbox: Sandbox, timeout_s: float = READY_TIMEOUT_S) -> None:
        async def died() -> str | None:
            return None if sandbox.id in {s.id for s in await self.inner.list()} else "is gone"

        await wait_healthy(sandbox, timeout_s, died=died, destroy=self.destroy, log_tail=self.log_tail)

    async def destroy(self, sandbox_id: str) -> None:
        self.ingress.routes.pop(sandbox_id, None)
        await self.inner.destroy(sandbox_id)

    async def log_tail(self, sandbox_id: str) -> str:
        return await self.inner.log_tail(sandbox_id)

    async def list(self, selector: dict[str, str] | None = None) -> list[Sandbox]:
        return [self._exposed(s) for s in await self.inner.list(selector)]

    async def close(self) -> None:
        await self.inner.close()
