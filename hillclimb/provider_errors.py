"""Typed provider errors: retryable (capacity, transient API trouble) versus fatal (bad spec).

Providers translate their SDK's errors into these at the boundary, chained with `from e`.
Callers decide by type: a pool retries `RetryableProviderError` with backoff (never sooner
than its `delay_s`) and gives up for good at once on `FatalProviderError`.
"""

from __future__ import annotations

from hillclimb.errors import HillclimbError


class ProviderError(HillclimbError):
    """Any failure to create, reach or destroy a sandbox."""


class RetryableProviderError(ProviderError):
    """Worth retrying: capacity, rate limits, a transient API error. Pass `delay_s` when the
    provider says how long to wait (a Retry-After); a pool never retries sooner."""

    delay_s: float = 0.0
    """The least wait before a retry (0: the caller's own backoff decides)."""


class FatalProviderError(ProviderError):
    """Retrying cannot help: the spec, the image or the machine is wrong."""


class BadSpecError(FatalProviderError, ValueError):
    """The sandbox spec is invalid for this provider (unknown image, impossible limits...)."""


class UnsupportedPolicy(FatalProviderError):
    """The provider cannot enforce the requested egress policy; it never runs weaker than asked."""


class IsolationUnavailable(FatalProviderError):
    """This machine offers no isolation the provider can use, and unisolated mode was not chosen."""


class SandboxNotFound(FatalProviderError, LookupError):
    """No sandbox with this id exists (or it is already gone)."""


class CapacityError(RetryableProviderError):
    """The provider is at its limit of sandboxes; retry later."""


class ReadyTimeoutError(RetryableProviderError, TimeoutError):
    """The sandbox did not answer its health check in time (it is destroyed before this is raised)."""


class SandboxDiedError(RetryableProviderError):
    """The sandbox exited while starting; `log_tail` holds the end of its log."""


class ImagePushError(HillclimbError, RuntimeError):
    """`hillclimb image push` failed; fields `ref` (what was pushed) and `registry`."""


class LocalImageNotFound(ImagePushError, LookupError):
    """The image to push is not in the local Docker engine."""


class RegistryAuthError(ImagePushError, PermissionError):
    """The registry refused the engine's credentials (none, wrong, or without push rights)."""


class RegistryUnreachableError(ImagePushError, ConnectionError):
    """The Docker engine cannot reach the registry (the name does not resolve, nothing listens, a timeout)."""
