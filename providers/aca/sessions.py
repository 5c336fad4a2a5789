"""A session pool's data plane: claiming a session, stopping one, listing them (`azure-core`).

    POST <endpoint>/claim?identifier=<id>                     (the env server's /claim, through the pool)
    POST <endpoint>/.management/stopSession?identifier=<id>&api-version=...
    POST <endpoint>/.management/listSessions?skip=0&api-version=...   (pages: value, nextLink)

Every request carries an Entra token for `https://dynamicsessions.io` (refreshed by azure-core's
bearer policy before it expires). The first request naming an identifier allocates a session
from the pool's ready ones, so the claim is what makes a sandbox; a 404 there means the pool has
no session free (at its cap): back-pressure, retried, not a broken sandbox.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from envs.wire.http import ENV_TOKEN_HEADER
from hillclimb.provider_errors import FatalProviderError, RetryableProviderError
from providers.aca.errors import SESSION_EXECUTOR, retry_after, translate

SCOPE = "https://dynamicsessions.io/.default"
DATA_PLANE_API_VERSION = "2025-02-02-preview"


@dataclass(frozen=True)
class SessionInfo:
    identifier: str
    created_at: datetime | None
    expires_at: datetime | None


class SessionPoolClient:
    """One pool's management endpoint; blocking calls (the provider runs them in threads)."""

    def __init__(
        self,
        endpoint: str,
        credential: Any,
        *,
        api_version: str = DATA_PLANE_API_VERSION,
        transport: Any = None,
        ca_file: str | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        from azure.core import PipelineClient
        from azure.core.exceptions import AzureError, ClientAuthenticationError
        from azure.core.pipeline.policies import BearerTokenCredentialPolicy, HeadersPolicy, UserAgentPolicy

        self.endpoint = endpoint.rstrip("/")
        self.api_version = api_version
        self._pool = urlsplit(self.endpoint).hostname or self.endpoint
        policies = [HeadersPolicy(), UserAgentPolicy("hillclimb"), BearerTokenCredentialPolicy(credential, SCOPE)]
        extra: dict[str, Any] = {"transport": transport} if transport is not None else {}
        if ca_file is not None:
            extra["connection_verify"] = ca_file
        self._client = PipelineClient(self.endpoint, policies=policies, **extra)
        self._azure_errors = AzureError
        self._no_token = ClientAuthenticationError
        self._timeout_s = timeout_s

    def claim(self, identifier: str, token: str) -> str:
        """Allocate the session `identifier` names and make `token` its env server's; returns the
        environment class it serves ('module:Class')."""
        response = self._post("/claim", {"identifier": identifier}, headers={ENV_TOKEN_HEADER: token})
        if response.status_code == 200:
            return str(response.json().get("env", ""))
        text = response.text()
        if response.status_code == 404 and "takes no claim" in text:
            raise FatalProviderError(
                f"session {identifier} of {self._pool}: the image's env server was started with a token "
                "of its own: the pool must run the provider's command (python -m envs ... --claim-token)"
            )
        if response.status_code == 404:
            raise RetryableProviderError(
                f"session pool {self._pool} has no free session (at its maximum): {text[:200]}",
                delay_s=retry_after(response) or 1.0,
            )
        raise self._error(response, f"claim session {identifier}")

    def stop(self, identifier: str) -> None:
        """Stop the session; one already gone is stopped."""
        response = self._post("/.management/stopSession", {"identifier": identifier, "api-version": self.api_version})
        if response.status_code not in (200, 202, 204, 404):
            raise self._error(response, f"stop session {identifier}")

    def sessions(self) -> list[SessionInfo]:
        found: list[SessionInfo] = []
        url: str | None = self._client.format_url("/.management/listSessions")
        params: dict[str, str] | None = {"skip": "0", "api-version": self.api_version}
        while url:
            response = self._send(url, params)
            if response.status_code != 200:
                raise self._error(response, "list sessions")
            page = response.json()
            found += [_session(item) for item in page.get("value", [])]
            url, params = page.get("nextLink"), None  # the next page's link carries its own query
        return found

    def close(self) -> None:
        self._client.close()

    def _post(self, path: str, params: dict[str, str], headers: dict[str, str] | None = None) -> Any:
        return self._send(self._client.format_url(path), params, headers)

    def _send(self, url: str, params: dict[str, str] | None, headers: dict[str, str] | None = None) -> Any:
        from azure.core.rest import HttpRequest

        request = HttpRequest("POST", url, params=params, headers=headers)
        try:
            return self._client.send_request(request, connection_timeout=self._timeout_s, read_timeout=self._timeout_s)
        except self._no_token as e:
            raise FatalProviderError(f"no token for {SCOPE} (check the credential): {e}") from e
        except self._azure_errors as e:  # no answer: the network, a timeout
            raise RetryableProviderError(f"session pool {self._pool}: {type(e).__name__}: {e}") from e

    def _error(self, response: Any, doing: str) -> Exception:
        return translate(
            response.status_code,
            response.text(),
            doing=f"{doing} in {self._pool}",
            forbidden_needs=f"the {SESSION_EXECUTOR} role on the session pool",
            response=response,
        )


def _session(item: dict[str, Any]) -> SessionInfo:
    def when(key: str) -> datetime | None:
        raw = item.get(key)
        return datetime.fromisoformat(raw.replace("Z", "+00:00")) if raw else None

    return SessionInfo(item["identifier"], when("createdAt"), when("expiresAt"))
