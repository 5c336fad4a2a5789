"""`RetryingClient`: POST JSON to an inference server, retrying what may pass and failing fast on
what will not. Shared by the completions (`openai`) and chat (`chat`) policies.

    post(path, body) ─► 200 ─────────────────────────► the JSON body
                     ─► 408, 429, 5xx, transport error ─► wait (doubling, or Retry-After), again;
                                                         after `max_retries`: PolicyUnavailableError
                     ─► any other 4xx ────────────────► PolicyRequestError at once (status on it)

The bearer key goes in a header and nowhere else: not in log lines, not in error messages (a
server's message that echoes it has it replaced).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, NoReturn

import httpx

from trainers.policy.errors import PolicyRequestError, PolicyResponseError, PolicyUnavailableError

__all__ = ["RETRYABLE_STATUSES", "RetryingClient"]

log = logging.getLogger("hillclimb.trainers.policy")

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
MAX_BODY_CHARS = 500


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
        self._client_args: dict[str, Any] = {
            "base_url": self.base_url,
            "headers": {"Authorization": f"Bearer {api_key}"} if api_key else {},
            # No pool timeout: with every connection busy a request waits its turn (the caller's own
            # deadline bounds that), rather than failing and being retried as if the server had.
            "timeout": httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0), pool=None),
            "limits": httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        }
        self._client: httpx.AsyncClient | None = None

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
                failure: Exception = e
                detail = f"{type(e).__name__}: {e}"
            else:
                status = response.status_code
                if status == 200:
                    return _json(response)
                detail = f"HTTP {status}: {self._redacted(_error_message(response))}"
                if status not in RETRYABLE_STATUSES:
                    _raise_for_status(url, status, detail)
                failure = PolicyResponseError(detail)
                retry_after = response.headers.get("retry-after")
            if attempt == self.max_retries:
                raise PolicyUnavailableError(
                    f"POST {url} failed {attempt + 1} times; last: {detail}. Is the server up and not overloaded?",
                    status=status,
                    attempts=attempt + 1,
                ) from failure
            delay = self._backoff(attempt, retry_after)
            log.warning("POST %s failed (%s); retry %d/%d in %.2f s", url, detail, attempt + 1, self.max_retries, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

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
