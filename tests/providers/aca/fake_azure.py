"""Azure's side, for tests: a credential that issues tokens naming their audience, and Azure
Resource Manager for Microsoft.App/sessionPools at the HTTP transport (a `requests` adapter that
azure-core's own transport sends through): PUT with its long-running operation, GET, list by
resource group, every request recorded, and errors queued to be answered next."""

from __future__ import annotations

import io
import itertools
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3
from azure.core.credentials import AccessToken
from azure.core.pipeline.transport import RequestsTransport

ARM = "https://management.azure.com"
ARM_SCOPE = "https://management.azure.com/.default"
_POOL = re.compile(
    r"^/subscriptions/([^/]+)/resourceGroups/([^/]+)/providers/Microsoft\.App/sessionPools(?:/([^/]+))?$"
)
_OPERATION = re.compile(r"^/operations/(\d+)$")


class FakeCredential:
    """An azure-core TokenCredential: each token names its audience and a serial number."""

    def __init__(self, lifetime_s: float = 3600.0) -> None:
        self.lifetime_s = lifetime_s
        self.issued: list[str] = []
        self._serial = itertools.count(1)

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        (scope,) = scopes
        token = f"{scope.removesuffix('/.default')}#{next(self._serial)}"
        self.issued.append(token)
        return AccessToken(token, int(time.time() + self.lifetime_s))


def audience(authorization: str | None) -> str | None:
    """The audience a fake token was issued for."""
    if not authorization or not authorization.startswith("Bearer "):
        return None
    return authorization.removeprefix("Bearer ").rsplit("#", 1)[0]


@dataclass
class Recorded:
    method: str
    path: str
    body: Any
    authorization: str | None


@dataclass
class FakeArm(requests.adapters.BaseAdapter):
    """Session pools of one subscription, kept in memory. A PUT answers 201 with an
    Azure-AsyncOperation to poll; the operation succeeds on its `polls_to_finish`-th poll,
    and only then does the pool have its management endpoint."""

    endpoint_of: Any = None
    """pool name → the management endpoint it gets (default: a made-up Azure host)."""
    polls_to_finish: int = 2
    pools: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests_seen: list[Recorded] = field(default_factory=list)
    queued_errors: list[tuple[str, int, dict[str, str], str]] = field(default_factory=list)
    _operations: dict[int, list[Any]] = field(default_factory=dict)
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        super().__init__()

    def transport(self) -> RequestsTransport:
        session = requests.Session()
        session.mount(ARM, self)
        return RequestsTransport(session=session, session_owner=False)

    def fail_next(
        self, method: str, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        self.queued_errors.append(
            (method, status, headers or {}, json.dumps({"error": {"code": code, "message": message}}))
        )

    def puts(self) -> list[Recorded]:
        return [r for r in self.requests_seen if r.method == "PUT"]

    # -- requests' adapter ----------------------------------------------------------------

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        url = urlsplit(request.url or "")
        body = json.loads(request.body) if request.body else None
        method = request.method or "GET"
        self.requests_seen.append(Recorded(method, url.path, body, request.headers.get("Authorization")))
        if audience(request.headers.get("Authorization")) != ARM_SCOPE.removesuffix("/.default"):
            return self._reply(
                request, 401, {"error": {"code": "InvalidAuthenticationToken", "message": "wrong audience"}}
            )
        for i, (queued_method, status, headers, text) in enumerate(self.queued_errors):
            if queued_method == method:
                del self.queued_errors[i]
                return self._reply(request, status, json.loads(text), headers)
        if "api-version=" not in (url.query or ""):
            return self._reply(
                request, 400, {"error": {"code": "MissingApiVersionParameter", "message": "api-version"}}
            )
        if (match := _OPERATION.match(url.path)) is not None:
            return self._poll(request, int(match.group(1)))
        match = _POOL.match(url.path)
        if match is None:
            return self._reply(request, 404, {"error": {"code": "NoRoute", "message": url.path}})
        name = match.group(3)
        if name is None:
            return self._reply(request, 200, {"value": list(self.pools.values())})
        if method == "GET":
            if name not in self.pools:
                return self._reply(
                    request, 404, {"error": {"code": "ResourceNotFound", "message": f"{name} not found"}}
                )
            return self._reply(request, 200, self.pools[name])
        if method == "PUT":
            return self._put(request, url.path, name, body)
        if method == "DELETE":
            if name not in self.pools:
                return self._reply(request, 204, None)
            operation = next(self._ids)
            self._operations[operation] = [0, name, "delete"]
            headers = {"Azure-AsyncOperation": f"{ARM}/operations/{operation}?api-version=2026-07-01"}
            return self._reply(request, 202, None, headers)
        return self._reply(request, 405, {"error": {"code": "MethodNotAllowed", "message": method}})

    def close(self) -> None:
        pass

    def _put(self, request: requests.PreparedRequest, path: str, name: str, body: dict[str, Any]) -> requests.Response:
        pool = {**body, "id": path, "name": name, "type": "Microsoft.App/sessionPools"}
        pool["properties"] = {**body["properties"], "provisioningState": "InProgress"}
        self.pools[name] = pool
        operation = next(self._ids)
        self._operations[operation] = [0, name]
        headers = {"Azure-AsyncOperation": f"{ARM}/operations/{operation}?api-version=2026-07-01"}
        return self._reply(request, 201, pool, headers)

    def _poll(self, request: requests.PreparedRequest, operation: int) -> requests.Response:
        state = self._operations[operation]
        state[0] += 1
        if state[0] < self.polls_to_finish:
            return self._reply(request, 200, {"status": "InProgress"})
        name = state[1]
        if state[2:] == ["delete"]:
            self.pools.pop(name, None)
            return self._reply(request, 200, {"status": "Succeeded"})
        endpoint = (
            self.endpoint_of(name) if self.endpoint_of else f"https://{name}.fakeenv.westus2.azurecontainerapps.io"
        )
        self.pools[name]["properties"] |= {"provisioningState": "Succeeded", "poolManagementEndpoint": endpoint}
        return self._reply(request, 200, {"status": "Succeeded"})

    @staticmethod
    def _reply(
        request: requests.PreparedRequest, status: int, body: Any, headers: dict[str, str] | None = None
    ) -> requests.Response:
        raw = urllib3.HTTPResponse(
            body=io.BytesIO(b"" if body is None else json.dumps(body).encode()),
            headers={"Content-Type": "application/json", **(headers or {})},
            status=status,
            preload_content=False,
        )
        return requests.adapters.HTTPAdapter().build_response(request, raw)
