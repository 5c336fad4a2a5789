"""`RetryingClient`: POST JSON to an inference server, retrying what may pass and failing fast on
what will not. Shared by the completions (`openai`) and chat (`chat`) policies.

    post(path, body) ─► 200 ─────────────────────────► the JSON body
                     ─► 408, 429, 5xx, transport error ─► wait (doubling, or Retry-After), again;
                                                         after `max_retries`: PolicyUnavailableError
                     ─► any other 4xx ────────────────► PolicyRequestError at once (status on it)
                     ─► host does not resolve, or ────► PolicyUnreachableError at once
                        connection refused before the
                        server ever answered

A name that does not resolve (not a resolver's temporary failure) will not resolve in a few
seconds either, and a port nobody listens on at the first request is a wrong URL or a server
not started: retrying those only delays the message. Once the server has answered, a refused
connection is a server restarting behind the same URL, and is retried like any transport error.

The bearer key goes in a header and nowhere else: not in log lines, not in error messages (a
server's message that echoes it has it replaced).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any, NoReturn

import httpx

from trainers.policy.errors import (
    PolicyRequestError,
    PolicyResponseError,
    PolicyUnavailableError,
    PolicyUnreachableError,
)

__all__ = ["RETRYABLE_STATUSES", "RetryingClient"]

log = logging.getLogger("hillclimb.trainers.policy")

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
MAX_BODY_CHARS = 500
CONNECT_TIMEOUT_S = 10.0
NAME_UNKNOWN = frozenset(
    code for code in (getattr(socket, "EAI_NONAME", None), getattr(socket, "EAI_NODATA", None)) if code is not None
)
"""getaddrinfo's answers that a name does not exist (not EAI_AGAIN, a resolver's temporary failure)."""


class RetryingClient:
    """One connection pool to `base_url`, opened on first use; at most `max_connections` requests
    are in flight, the rest wait for a connection. Use `aclose()` when done."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None,
        timeout_s: float,
        max_retries: int,
        backoff_s: float,
        max_backoff_s: float,
        max_connections: int,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._secret = api_key
        # No pool timeout: with every connection busy a request waits its turn (the caller's own
        # deadline bounds that), rather than failing and being retried as if the server had.
        self._timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, CONNECT_TIMEOUT_S), pool=None)
        self._client_args: dict[str, Any] = {
            "base_url": self.base_url,
            "headers": {"Authorization": f"Bearer {api_key}"} if api_key else {},
            "timeout": self._timeout,
            "limits": httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        }
        self._client: httpx.AsyncClient | None = None
        self._answered = False
        """Whether the server has answered this client once: from then on a refusal is a restart."""

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def post(self, path: str, body: dict[str, Any]) -> Any:
        if self._client is None:
            self._client = httpx.AsyncClient(**self._client_args)
        url = f"{self.base_url}{path}"
        for attempt in range(self.max_retries + 1):
            status: int | None = None
            retry_after: str | None = None
            try:
                response = await self._client.post(path, json=body)
            except httpx.TransportError as e:  # connect, read/write timeouts, dropped connections
                if (unreachable := self._unreachable(e, url)) is not None:
                    raise unreachable from e
                failure: Exception = e
                detail = _clause(e, self._timeout, url)
            else:
                self._answered = True
                status = response.status_code
                if status == 200:
                    return _json(response)
                message = self._redacted(_error_message(response)).strip().rstrip(".")
                detail = f"HTTP {status}: {message}" if message else f"HTTP {status}"
                if status not in RETRYABLE_STATUSES:
                    _raise_for_status(url, status, detail)
                failure = PolicyResponseError(detail)
                retry_after = response.headers.get("retry-after")
            if attempt == self.max_retries:
                raise PolicyUnavailableError(
                    f"POST {url} failed {attempt + 1} times; last: {detail}; is the server up and not overloaded?",
                    status=status,
                    attempts=attempt + 1,
                ) from failure
            delay = self._backoff(attempt, retry_after)
            log.warning("POST %s failed (%s); retry %d/%d in %.2f s", url, detail, attempt + 1, self.max_retries, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _unreachable(self, error: httpx.TransportError, url: str) -> PolicyUnreachableError | None:
        """The error to raise at once where no retry can help (see the module's docstring), else None."""
        cause = _socket_cause(error)
        if isinstance(cause, socket.gaierror) and cause.errno in NAME_UNKNOWN:
            host = httpx.URL(url).host
            message = f"POST {url}: the host name {host!r} does not resolve ({cause.strerror}); check the base URL"
        elif isinstance(cause, ConnectionRefusedError) and not self._answered:
            message = f"POST {url}: {_refused(url)}; is the server started, and is the base URL right?"
        else:
            return None
        return PolicyUnreachableError(message, url=url, status=None, attempts=1)

    def _redacted(self, message: str) -> str:
        """A server's message without our key (some echo the key they refused)."""
        return message.replace(self._secret, "<api key>") if self._secret else message

    def _backoff(self, attempt: int, retry_after: str | None) -> float:
        delay = self.backoff_s * 2**attempt
        if retry_after is not None:
            # An HTTP-date Retry-After (rare from inference servers) falls back to our own schedule.
            with contextlib.suppress(ValueError):
                delay = max(delay, float(retry_after))
        return min(delay, self.max_backoff_s)


def _socket_cause(error: BaseException) -> OSError | None:
    """The resolver's or the socket's error under an httpx one (httpx ← httpcore ← anyio's
    "All connection attempts failed" ← one error per address tried), if one decides it: a
    refusal only where every address refused."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, (socket.gaierror, ConnectionRefusedError)):
            return seen
        if isinstance(seen, BaseExceptionGroup):
            causes = [_socket_cause(member) for member in seen.exceptions]
            refused = all(isinstance(c, ConnectionRefusedError) for c in causes)
            return causes[0] if refused else None
        seen = seen.__cause__ or seen.__context__
    return None


def _refused(url: str) -> str:
    parsed = httpx.URL(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return f"connection refused: nothing listens at {parsed.host}:{port}"


def _clause(error: httpx.TransportError, timeout: httpx.Timeout, url: str) -> str:
    """`ReadTimeout: no response within 120 s`, `RemoteProtocolError: Server disconnected ...`:
    what went wrong as a clause (no trailing period, never empty), a timeout's limit where httpx
    gives no message."""
    if isinstance(_socket_cause(error), ConnectionRefusedError):
        return _refused(url)
    message = str(error).strip().rstrip(".")
    if not message and isinstance(error, httpx.TimeoutException):
        limits = {
            httpx.ConnectTimeout: ("no connection", timeout.connect),
            httpx.ReadTimeout: ("no response", timeout.read),
            httpx.WriteTimeout: ("request not sent", timeout.write),
        }
        what, limit = limits.get(type(error), ("timed out", None))
        message = f"{what} within {limit:g} s" if limit is not None else what
    return f"{type(error).__name__}: {message or 'no detail given'}"


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as e:
        raise PolicyResponseError(f"response is not JSON: {response.text[:MAX_BODY_CHARS]!r}") from e


def _error_message(response: httpx.Response) -> str:
    """The server's own error message (OpenAI: {"error": {"message"}}; older vLLM: {"message"})."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:MAX_BODY_CHARS]
    if isinstance(body, dict):
        error = body.get("error")
        message = error.get("message") if isinstance(error, dict) else body.get("message")
        if isinstance(message, str):
            return message[:MAX_BODY_CHARS]
    return str(body)[:MAX_BODY_CHARS]


def _raise_for_status(url: str, status: int, detail: str) -> NoReturn:
    if 400 <= status < 500:
        raise PolicyRequestError(f"POST {url} was refused: {detail}", status=status)
    raise PolicyResponseError(f"POST {url} answered {detail}", status=status)
