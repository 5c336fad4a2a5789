"""Azure's HTTP errors as the provider contract's, each saying what to fix."""

from __future__ import annotations

from typing import Any

from hillclimb.provider_errors import BadSpecError, FatalProviderError, ProviderError, RetryableProviderError

SESSION_EXECUTOR = "Azure ContainerApps Session Executor"
"""The role a caller needs on a session pool to reach its sessions."""


def retry_after(response: Any) -> float:
    raw = (getattr(response, "headers", None) or {}).get("Retry-After", "")
    return float(raw) if raw.isdigit() else 0.0


def translate(
    status: int | None, message: str, *, doing: str, forbidden_needs: str, response: Any = None
) -> ProviderError:
    """`doing` names the call ('ensure session pool p'); `forbidden_needs` the role a 403 lacks."""
    said = f"{doing}: HTTP {status}: {message[:500]}"
    if status == 401:
        return FatalProviderError(
            f"{said} (not authenticated: check the credential; DefaultAzureCredential reads the "
            "environment, a managed or workload identity, or `az login`)"
        )
    if status == 403:
        return FatalProviderError(f"{said} (forbidden: the identity needs {forbidden_needs})")
    if status in (400, 422):
        return BadSpecError(said)
    if status in (408, 409, 429) or (status or 0) >= 500:
        return RetryableProviderError(said, delay_s=retry_after(response))
    return FatalProviderError(said)
