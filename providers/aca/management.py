"""The session pools themselves, through Azure Resource Manager (`azure-mgmt-appcontainers`).

`ensure` is idempotent: a pool whose digest tag matches and that provisioned is used as it is;
any other state (absent, a different digest, a failed provisioning) is PUT and its long-running
operation waited for. Blocking calls: the provider runs them in threads.
"""

from __future__ import annotations

from typing import Any

from providers.aca.errors import translate
from providers.aca.pool import DIGEST_TAG, MANAGED_TAG

POOL_WRITER = "Contributor (or a role with Microsoft.App/sessionPools/write) on the resource group"


class PoolManager:
    def __init__(
        self,
        credential: Any,
        subscription_id: str,
        resource_group: str,
        *,
        transport: Any = None,
        polling_interval_s: float | None = None,
    ) -> None:
        from azure.core.exceptions import HttpResponseError
        from azure.mgmt.appcontainers import ContainerAppsAPIClient

        # No retries inside the SDK: a 429's Retry-After would hold a thread for its whole wait;
        # the error goes to the sandbox pool instead, which backs off without blocking.
        extra: dict[str, Any] = {"retry_total": 0, **({"transport": transport} if transport is not None else {})}
        if polling_interval_s is not None:
            extra["polling_interval"] = polling_interval_s
        self._client = ContainerAppsAPIClient(credential, subscription_id, **extra)
        self._pools = self._client.container_apps_session_pools
        self._errors = HttpResponseError
        self.resource_group = resource_group

    def ensure(self, name: str, body: dict[str, Any]) -> str:
        """The pool management endpoint of pool `name`, made or updated to `body` if need be."""
        existing = self._call(f"read session pool {name}", self._pools.get, self.resource_group, name, missing_ok=True)
        if existing is not None and _current(existing, body):
            return str(existing.pool_management_endpoint)
        poller = self._call(
            f"create session pool {name}", self._pools.begin_create_or_update, self.resource_group, name, body
        )
        made = self._call(f"create session pool {name}", poller.result)
        return str(made.pool_management_endpoint)

    def delete(self, name: str) -> None:
        """Delete pool `name` and every session in it; one already gone is deleted."""
        doing = f"delete session pool {name}"
        poller = self._call(doing, self._pools.begin_delete, self.resource_group, name, missing_ok=True)
        if poller is not None:
            self._call(doing, poller.result, missing_ok=True)

    def endpoint(self, name: str) -> str | None:
        pool = self._call(f"read session pool {name}", self._pools.get, self.resource_group, name, missing_ok=True)
        return None if pool is None else str(pool.pool_management_endpoint)

    def managed(self) -> dict[str, str]:
        """Pool name → management endpoint, for every pool of the resource group this provider made
        (one still being made has no endpoint yet, nor sessions)."""
        pools = self._call(
            f"list session pools in {self.resource_group}",
            lambda: list(self._pools.list_by_resource_group(self.resource_group)),
        )
        return {
            p.name: str(p.pool_management_endpoint)
            for p in pools
            if (p.tags or {}).get(MANAGED_TAG) == "true" and p.pool_management_endpoint
        }

    def close(self) -> None:
        self._client.close()

    def _call(self, doing: str, call: Any, *args: Any, missing_ok: bool = False) -> Any:
        try:
            return call(*args)
        except self._errors as e:
            if missing_ok and e.status_code == 404:
                return None
            raise translate(
                e.status_code, str(e.message), doing=doing, forbidden_needs=POOL_WRITER, response=e.response
            ) from e


def _current(pool: Any, body: dict[str, Any]) -> bool:
    return (pool.tags or {}).get(DIGEST_TAG) == body["tags"][DIGEST_TAG] and pool.provisioning_state == "Succeeded"
