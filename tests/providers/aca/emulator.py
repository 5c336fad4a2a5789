"""Session pools' management endpoints, emulated on this machine in front of local sandboxes.

    https://127.0.0.1:<port>/pools/<pool>/<path>?identifier=<id>     a session's container, at /<path>
    https://127.0.0.1:<port>/pools/<pool>/.management/listSessions   pages of `page_size`, with nextLink
    https://127.0.0.1:<port>/pools/<pool>/.management/stopSession?identifier=<id>

Each pool runs what its definition says (`pools(name)`: the ARM body the provider sent, or one
written by hand): the container's arguments name the environment and its session cap.

What ACA does that the provider relies on, done here: TLS (a private CA); a token for the
`https://dynamicsessions.io` audience and no other (an ARM token is refused); the first request
naming an unknown identifier allocates a session, which runs the image's server started
claimable (`python -m envs ... --claim-token`, in a local sandbox of its own); a 404 when the
pool is at its maximum; sessions idle past the cooldown ended; the management API's api-version.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from envs.client.base import Endpoint
from envs.wire import http
from providers.contract import Sandbox, SandboxSpec
from providers.local import LocalProvider
from tests.ingress import SessionPoolIngress, forward
from tests.providers.aca.fake_azure import audience

SESSIONS_AUDIENCE = "https://dynamicsessions.io"


def claimable_server(container_args: list[str]) -> tuple[str, ...]:
    """The pool's container command as a local sandbox's custom command: the same arguments, but
    serving on the socket the sandbox names instead of the container's port."""
    env, flags = container_args[0], container_args[1:]
    keep = [f"--max-sessions {flags[flags.index('--max-sessions') + 1]}"] if "--max-sessions" in flags else []
    assert "--claim-token" in flags, "the pool's server must be claimable"
    serve = f'exec {sys.executable} -m envs {env} --uds "$HILLCLIMB_ENV_SOCKET" --claim-token {" ".join(keep)}'
    return ("/bin/sh", "-c", serve)


def hand_made_pool(env: str, max_sessions: int = 16) -> dict[str, Any]:
    """A pool definition as a user would write it by hand (what `pools(name)` returns)."""
    args = [env, "--host", "0.0.0.0", "--port", "8000", "--claim-token", "--max-sessions", str(max_sessions)]
    return {"properties": {"customContainerTemplate": {"containers": [{"args": args}]}}}


@dataclass
class _Session:
    pool: str
    sandbox: Sandbox
    socket_path: str
    created_at: float
    last_access: float


class SessionPoolEmulator(SessionPoolIngress):
    def __init__(
        self,
        sandboxes: LocalProvider,
        pools: Callable[[str], dict[str, Any] | None],
        *,
        tls: Any,
        max_concurrent_sessions: int = 4,
        cooldown_s: float = 300.0,
        page_size: int = 300,
    ) -> None:
        super().__init__(prefix="", tls=tls)
        self._sandboxes = sandboxes
        self._pools = pools
        self.max_concurrent_sessions = max_concurrent_sessions
        """Per pool, as ACA's maxConcurrentSessions."""
        self.cooldown_s = cooldown_s
        self.page_size = page_size
        self.sessions: dict[str, _Session] = {}
        self.allocations = 0
        self._allocating: dict[str, asyncio.Future[_Session]] = {}
        self._cooldown: asyncio.Task[None] | None = None

    def pool_endpoint(self, pool: str) -> str:
        return f"{self.endpoint}/pools/{pool}"

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    async def start(self) -> None:
        await super().start()
        self._cooldown = asyncio.create_task(self._end_idle_sessions())

    async def close(self) -> None:
        if self._cooldown is not None:
            self._cooldown.cancel()
            await asyncio.gather(self._cooldown, return_exceptions=True)
        for identifier in list(self.sessions):
            await self._stop(identifier)
        await super().close()

    async def _answer(self, request: http.Request) -> bytes:
        parts = urlsplit(request.target)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if audience(request.headers.get("authorization")) != SESSIONS_AUDIENCE:
            return self._refuse(401, f"a token for {SESSIONS_AUDIENCE} is required")
        _, pools, pool, path = (parts.path.split("/", 3) + ["", ""])[:4]
        definition = self._pools(pool) if pools == "pools" else None
        if definition is None:
            return self._refuse(404, f"no session pool at {parts.path}")
        path = "/" + path
        if path.startswith("/.management/"):
            return await self._manage(pool, path, query)
        identifier = query.get("identifier", "")
        if not 4 <= len(identifier) <= 128:
            return self._refuse(400, "the identifier query parameter (4-128 characters) is required")
        session = await self._session(pool, definition, identifier)
        if session is None:
            return self._refuse(404, "no session available: the pool is at its maximum concurrent sessions")
        session.last_access = time.monotonic()
        passed = {k: v for k, v in request.headers.items() if k not in ("authorization", "host", "connection")}
        self.forwarded.append((path, passed))
        return await forward(session.socket_path, request.method, path, passed, request.body)

    async def _manage(self, pool: str, path: str, query: dict[str, str]) -> bytes:
        if "api-version" not in query:
            return self._refuse(400, "api-version is required")
        if path == "/.management/listSessions":
            skip = int(query.get("skip", "0"))
            names = sorted(name for name, session in self.sessions.items() if session.pool == pool)
            page: dict[str, Any] = {"value": [self._info(name) for name in names[skip : skip + self.page_size]]}
            if skip + self.page_size < len(names):
                page["nextLink"] = (
                    f"{self.pool_endpoint(pool)}/.management/listSessions?skip={skip + self.page_size}"
                    f"&api-version={query['api-version']}"
                )
            return http.render_response(200, json.dumps(page).encode(), {"Content-Type": "application/json"})
        if path == "/.management/stopSession":
            identifier = query.get("identifier", "")
            if identifier not in self.sessions or self.sessions[identifier].pool != pool:
                return self._refuse(404, f"session {identifier} not found")
            await self._stop(identifier)
            return http.render_response(200, f"Session {identifier} in session pool {pool} stopped.".encode())
        return self._refuse(404, f"no management operation {path}")

    def _info(self, identifier: str) -> dict[str, str]:
        session = self.sessions[identifier]
        idle_left = self.cooldown_s - (time.monotonic() - session.last_access)
        return {
            "identifier": identifier,
            "createdAt": _iso(session.created_at),
            "expiresAt": _iso(time.time() + idle_left),
        }

    async def _session(self, pool: str, definition: dict[str, Any], identifier: str) -> _Session | None:
        """The session `identifier` names, allocated on first use; None at the pool's cap."""
        if identifier in self.sessions:
            return self.sessions[identifier] if self.sessions[identifier].pool == pool else None
        if identifier in self._allocating:  # a concurrent first request: one allocation
            return await asyncio.shield(self._allocating[identifier])
        if sum(s.pool == pool for s in self.sessions.values()) + len(self._allocating) >= self.max_concurrent_sessions:
            return None
        made: asyncio.Future[_Session] = asyncio.get_running_loop().create_future()
        self._allocating[identifier] = made
        try:
            (container,) = definition["properties"]["customContainerTemplate"]["containers"]
            spec = SandboxSpec(env=container["args"][0], command=claimable_server(container["args"]))
            sandbox = await self._sandboxes.create(spec)
            await self._sandboxes.wait_ready(sandbox)
            socket_path = Endpoint.parse(sandbox.endpoint).uds
            assert socket_path is not None
            session = self.sessions[identifier] = _Session(pool, sandbox, socket_path, time.time(), time.monotonic())
            self.allocations += 1
            made.set_result(session)
            return session
        except BaseException as e:
            made.set_exception(e)
            made.exception()  # retrieved: it is raised here, and to any concurrent first request
            raise
        finally:
            del self._allocating[identifier]

    async def _stop(self, identifier: str) -> None:
        session = self.sessions.pop(identifier)
        await self._sandboxes.destroy(session.sandbox.id)

    async def _end_idle_sessions(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            now = time.monotonic()
            for identifier, session in list(self.sessions.items()):
                if now - session.last_access > self.cooldown_s and identifier in self.sessions:
                    await self._stop(identifier)


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
