"""`AcaProvider`: sandboxes as Azure Container Apps dynamic sessions, one session per sandbox.

    create ─► the pool the spec needs (providers.aca.pool), ensured once per provider
           ─► a fresh identifier  hc-<run>-<random>  (or the idempotency key's digest)
           ─► POST <pool>/claim?identifier=...   allocates the session and gives its env
              server a token of its own (the session's server was started claimable)
    handle: https://<pool endpoint>?identifier=<id>, the HTTP session binding, an Entra token
            for dynamicsessions.io in Authorization (refreshed), the env token in its own header
    destroy ─► .management/stopSession     list ─► .management/listSessions of every pool it made

Hyper-V isolation per session and egress disabled for the whole pool are the platform's; there
is no allow-list (refused, saying so). Sessions carry no labels: the identifier carries the run,
the platform's timestamps the rest. A dead driver's sessions end at the pool's cooldown (timed
lifecycle) or at the server's time-to-live, whichever comes first, if no reaper gets there first.
"""

from __future__ import annotations

import asyncio
import importlib
import secrets
import ssl
import threading
import time
from typing import Any, Literal
from urllib.parse import quote

from pydantic import SecretStr

from envs.authoring.registry import class_path
from envs.client.credentials import Credential
from envs.server.targets import env_class_of
from envs.wire.http import ENV_TOKEN_HEADER
from hillclimb.config.providers import AcaOptions, check_pool_source
from hillclimb.provider_errors import BadSpecError
from providers.aca.management import PoolManager
from providers.aca.pool import (
    POOL_PREFIX,
    new_identifier,
    pool_settings,
    pool_tags,
    refuse_what_aca_cannot_do,
    run_of,
    session_pool_body,
)
from providers.aca.sessions import DATA_PLANE_API_VERSION, SCOPE, SessionInfo, SessionPoolClient
from providers.contract import LABEL_CREATED, LABEL_EXPIRES, LABEL_RUN, Sandbox, SandboxSpec
from providers.readiness import READY_TIMEOUT_S, wait_healthy
from providers.toolkit import InflightCalls, KeyLocks, create_in_thread, utc_from_timestamp

HAND_MADE = "pool"
"""The name a pool made by hand (`pool_endpoint`) goes by in sandbox ids."""


class AcaProvider:
    name = "aca"
    options_model = AcaOptions
    run_liveness = None

    def __init__(
        self,
        subscription_id: str | None = None,
        resource_group: str | None = None,
        environment_id: str | None = None,
        location: str | None = None,
        image: str | None = None,
        pool_endpoint: str | None = None,
        lifecycle: Literal["timed", "on-exit"] = "timed",
        cooldown_s: int = 600,
        ready_sessions: int = 0,
        max_concurrent_sessions: int = 64,
        registry_server: str | None = None,
        registry_identity: str | None = None,
        pool_prefix: str = POOL_PREFIX,
        data_plane_api_version: str = DATA_PLANE_API_VERSION,
        ca_file: str | None = None,
        arm_polling_s: float = 5.0,
        credential: Any = None,
        management_transport: Any = None,
        data_transport: Any = None,
    ) -> None:
        """Pools made by the provider: `subscription_id`, `resource_group`, `environment_id` (a
        workload-profiles environment's resource id), `location` and `image` (the sandbox image,
        pulled from `registry_server` by managed identity: `registry_identity`'s resource id, or
        the pool's system identity). Or a pool made by hand: `pool_endpoint`, its management
        endpoint, and no Resource Manager call at all. `credential`: an azure-core
        TokenCredential, or 'module:attr' naming a callable that returns one (default:
        DefaultAzureCredential). `arm_polling_s`: how often a pool being made is polled when
        Resource Manager does not say. `ca_file` and the transports: a private CA, and tests."""
        pool = {"environment_id": environment_id, "location": location, "image": image}
        try:
            arm = {"subscription_id": subscription_id, "resource_group": resource_group, "pool_endpoint": pool_endpoint}
            check_pool_source(arm | pool)
        except ValueError as e:
            raise BadSpecError(str(e)) from None
        self._credential = _credential(credential)
        self._pool_options = {
            **pool,
            "lifecycle": lifecycle,
            "cooldown_s": cooldown_s,
            "ready_sessions": ready_sessions,
            "max_concurrent_sessions": max_concurrent_sessions,
            "registry_server": registry_server,
            "registry_identity": registry_identity,
        }
        self._pool_prefix = pool_prefix
        self._pool_endpoint = pool_endpoint
        self._management = (
            None
            if pool_endpoint is not None
            else PoolManager(
                self._credential,
                str(subscription_id),
                str(resource_group),
                transport=management_transport,
                polling_interval_s=arm_polling_s,
            )
        )
        self._data_options = {"api_version": data_plane_api_version, "transport": data_transport, "ca_file": ca_file}
        self._tls = ssl.create_default_context(cafile=ca_file) if ca_file else None
        self._token_provider = _bearer_token_provider(self._credential)
        self._clients: dict[str, SessionPoolClient] = {}
        """pool name → its data plane client (the pool's endpoint known)."""
        self._ensured: dict[str, threading.Lock] = {}
        self._ensure_lock = threading.Lock()
        self._tokens: dict[str, SecretStr] = {}
        self._sandboxes: dict[str, Sandbox] = {}
        self._key_locks = KeyLocks()
        self._inflight = InflightCalls()

    # -- the contract -------------------------------------------------------------------

    async def create(self, spec: SandboxSpec) -> Sandbox:
        return await create_in_thread(spec, self._create, self.destroy)

    async def wait_ready(self, sandbox: Sandbox, timeout_s: float = READY_TIMEOUT_S) -> None:
        async def died() -> str | None:
            return None  # its server answered the claim; /health is all that is left to see

        await wait_healthy(sandbox, timeout_s, died=died, destroy=self.destroy, log_tail=self.log_tail)

    async def destroy(self, sandbox_id: str) -> None:
        await asyncio.to_thread(self._destroy, sandbox_id)

    async def log_tail(self, sandbox_id: str) -> str:
        return ""  # a session's console log goes to the environment's Log Analytics workspace only

    async def list(self, selector: dict[str, str] | None = None) -> list[Sandbox]:
        return await asyncio.to_thread(self._list, selector or {})

    async def close(self) -> None:
        await asyncio.to_thread(self._inflight.wait_idle, 120.0)  # a create still claiming: wait for what it makes
        for sandbox_id in list(self._tokens):
            await self.destroy(sandbox_id)
        for client in self._clients.values():
            await asyncio.to_thread(client.close)
        if self._management is not None:
            await asyncio.to_thread(self._management.close)

    # -- in threads ---------------------------------------------------------------------

    def _create(self, spec: SandboxSpec) -> Sandbox:
        with self._inflight.track():
            return self._claimed(spec)

    def _claimed(self, spec: SandboxSpec) -> Sandbox:
        pool, client = self._pool_for(spec)
        with self._key_locks.hold(spec):
            if spec.idempotency_key is not None:
                identifier = new_identifier(spec.run_id, suffix=spec.key_digest[:16])
                if (made := self._sandboxes.get(f"{pool}/{identifier}")) is not None:
                    return made
            else:
                identifier = new_identifier(spec.run_id)
            token = secrets.token_urlsafe(32)
            created_at = time.time()
            served = client.claim(identifier, token)
            sandbox_id = f"{pool}/{identifier}"
            if served != class_path(env_class_of(spec.env)):
                client.stop(identifier)
                raise BadSpecError(f"pool {pool} serves {served}, not the spec's environment {spec.env!r}")
            self._tokens[sandbox_id] = SecretStr(token)
            sandbox = self._sandbox(pool, identifier, created_at, spec.all_labels(created_at))
            self._sandboxes[sandbox_id] = sandbox
            return sandbox

    def _pool_for(self, spec: SandboxSpec) -> tuple[str, SessionPoolClient]:
        """The pool `spec` needs and its data plane, the pool made (or brought to the spec) the
        first time it is asked for; a pool made by hand is the only one."""
        if self._management is None:
            refuse_what_aca_cannot_do(spec)  # the pool is the user's: its image, resources and env are theirs
            return HAND_MADE, self._client(HAND_MADE, str(self._pool_endpoint))
        settings = pool_settings(spec, **self._pool_options)  # refuses what ACA cannot do, before any call
        pool = settings.name(self._pool_prefix)
        with self._ensure_lock:
            lock = self._ensured.setdefault(pool, threading.Lock())
        with lock:
            if pool not in self._clients:
                self._client(pool, self._management.ensure(pool, session_pool_body(settings, pool_tags(spec))))
            return pool, self._clients[pool]

    def _client(self, pool: str, endpoint: str) -> SessionPoolClient:
        if pool not in self._clients:
            self._clients[pool] = SessionPoolClient(endpoint, self._credential, **self._data_options)
        return self._clients[pool]

    def _pools(self) -> dict[str, str]:
        """Pool name → management endpoint, of every pool this provider's sandboxes may be in."""
        if self._management is None:
            return {HAND_MADE: str(self._pool_endpoint)}
        return self._management.managed()

    def _client_of(self, pool: str) -> SessionPoolClient | None:
        if pool not in self._clients:
            endpoint = self._pools().get(pool)
            if endpoint is None:
                return None
            self._client(pool, endpoint)
        return self._clients[pool]

    def _destroy(self, sandbox_id: str) -> None:
        pool, _, identifier = sandbox_id.partition("/")
        self._tokens.pop(sandbox_id, None)
        self._sandboxes.pop(sandbox_id, None)
        client = self._client_of(pool)
        if client is not None:  # a pool that is gone took its sessions with it
            client.stop(identifier)

    def _list(self, selector: dict[str, str]) -> list[Sandbox]:
        found = []
        for pool, endpoint in self._pools().items():
            for session in self._client(pool, endpoint).sessions():
                sandbox = self._listed(pool, session)
                if sandbox is not None and selector.items() <= sandbox.labels.items():
                    found.append(sandbox)
        return found

    def _listed(self, pool: str, session: SessionInfo) -> Sandbox | None:
        """A listed session as a sandbox: ours (made here, with its labels) or another process's
        (its run from the identifier, its times from the platform); None for a foreign session."""
        if (made := self._sandboxes.get(f"{pool}/{session.identifier}")) is not None:
            return made
        run = run_of(session.identifier)
        if run is None:
            return None
        created = session.created_at.timestamp() if session.created_at else time.time()
        labels = {LABEL_RUN: run, LABEL_CREATED: str(int(created))}
        if session.expires_at is not None:
            labels[LABEL_EXPIRES] = str(int(session.expires_at.timestamp()))
        return self._sandbox(pool, session.identifier, created, labels)

    def _sandbox(self, pool: str, identifier: str, created_at: float, labels: dict[str, str]) -> Sandbox:
        sandbox_id = f"{pool}/{identifier}"
        endpoint = self._clients[pool].endpoint
        return Sandbox(
            id=sandbox_id,
            endpoint=f"{endpoint}?identifier={quote(identifier, safe='')}",
            token=self._tokens.get(sandbox_id),
            provider=self.name,
            created_at=utc_from_timestamp(created_at),
            labels=labels,
            transport="http",
            token_header=ENV_TOKEN_HEADER,
            tls=self._tls,
            platform_credentials=(Credential(self._token_provider),),
        )


def _credential(given: Any) -> Any:
    """A TokenCredential: the one given, the one a 'module:attr' callable makes, or the default."""
    if given is None:
        from azure.identity import DefaultAzureCredential

        return DefaultAzureCredential()
    if isinstance(given, str):
        module, _, attr = given.partition(":")
        if not module or not attr:
            raise BadSpecError(f"credential {given!r}: name a callable as 'module:attr'")
        try:
            return getattr(importlib.import_module(module), attr)()
        except (ImportError, AttributeError) as e:
            raise BadSpecError(f"credential {given!r}: {e}") from e
    return given


def _bearer_token_provider(credential: Any) -> Any:
    """A function returning a current token for the sessions' audience (azure-identity caches and
    refreshes it before expiry)."""
    from azure.identity import get_bearer_token_provider

    return get_bearer_token_provider(credential, SCOPE)
