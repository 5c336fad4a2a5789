"""Typed errors of the policy engines.

Each inherits the stdlib type it stands in for (so `except ValueError` around a bad prompt
keeps working) and pickles with its fields, because policies run inside Ray actors and
Ray re-raises their errors in the caller's process. Retryability is in the type: a
`PolicyRequestError` will fail the same way again, a `PolicyUnavailableError` may not.
"""

from __future__ import annotations

from hillclimb.errors import HillclimbError

__all__ = [
    "ContextOverflowError",
    "EngineNotInstalledError",
    "PolicyError",
    "PolicyRequestError",
    "PolicyResponseError",
    "PolicyUnavailableError",
    "PolicyUnreachableError",
    "WeightPublishTimeoutError",
    "WeightsNotUpdatableError",
]


class PolicyError(HillclimbError):
    """An inference engine refused or failed a request."""


class PolicyRequestError(PolicyError, ValueError):
    """The request itself is invalid (empty prompt, token id outside the vocabulary, or a 4xx
    from a server); sending it again fails again. `status` is the HTTP status, or None if the
    request was refused before it left the process."""


class ContextOverflowError(PolicyRequestError):
    """prompt + max_new_tokens does not fit the model's context; fields `prompt_tokens`,
    `max_new_tokens`, `max_context`."""


class PolicyUnavailableError(PolicyError, ConnectionError):
    """An inference server could not be reached or kept failing (429, 5xx, transport errors)
    after every retry; fields `status` (the last one, None for a transport error) and `attempts`."""


class PolicyUnreachableError(PolicyUnavailableError):
    """No server at the base URL: its host name does not resolve, or nothing listens on its port
    (before the server ever answered this client). Raised at the first attempt, since retrying
    cannot help; fields `url`, `status` (None) and `attempts`."""


class PolicyResponseError(PolicyError, RuntimeError):
    """An inference engine answered with something this client cannot use (a malformed body,
    an unknown finish reason); the engine and this client disagree on the protocol."""


class EngineNotInstalledError(PolicyError, ImportError):
    """An optional inference engine's package is missing; the message names the extra to install."""


class WeightsNotUpdatableError(PolicyError, NotImplementedError):
    """This policy cannot load weights: its server manages them (evaluation use only)."""


class WeightPublishTimeoutError(PolicyError, TimeoutError):
    """A policy engine did not finish loading published weights in time (`policy.publish.timeout_s`);
    fields `engine` (its index among the run's engines), `version` and `timeout_s`."""
