"""Typed errors shared by every hillclimb package.

`HillclimbError` is the root. Each category also inherits the stdlib type it stands in
for, so `except TimeoutError` keeps working, and every exception pickles with its fields
because Ray re-raises errors in another process. The wire errors map one-to-one onto
OpenEnv's error codes: the server sends the code, the client raises the matching type.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class Fault(StrEnum):
    """What a failure during an episode says about where to go on: a property of the error's type."""

    RUN = "run"
    """Misconfiguration that no fresh sandbox mends (a refused token, an untrusted certificate): stop the run."""
    SANDBOX = "sandbox"
    """The sandbox or its connection failed: retry the episode on a fresh sandbox."""
    ENVIRONMENT = "environment"
    """The environment raised and its server lives on: the sandbox goes back to the pool, the episode fails."""


class HillclimbError(Exception):
    """Root of every error hillclimb raises on purpose."""

    fault: Fault | None = None
    """Where an episode that met this error goes on (see `fault_of`); None: the error surfaces."""

    def __init__(self, message: str = "", **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        for name, value in fields.items():
            setattr(self, name, value)

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep keyword fields across pickling (Ray ships exceptions between processes).
        return (self.__class__, (self.message,), self.__dict__)

    def __str__(self) -> str:
        return self.message


def fault_of(error: BaseException) -> Fault | None:
    """The fault an episode met. Any other OSError (a refused or reset socket) is the sandbox's: a run
    stopper is told apart first, because the run stoppers are OSErrors too."""
    declared = getattr(error, "fault", None)
    if declared is Fault.RUN:
        return Fault.RUN
    if declared is Fault.SANDBOX or isinstance(error, OSError):
        return Fault.SANDBOX
    return declared


class ErrorCode(StrEnum):
    """OpenEnv's WebSocket error codes (`WSErrorCode`), verbatim on the wire."""

    INVALID_JSON = "INVALID_JSON"
    UNKNOWN_TYPE = "UNKNOWN_TYPE"
    VALIDATION_ERROR = "VALIDATION_ERROR"
    EXECUTION_ERROR = "EXECUTION_ERROR"
    CAPACITY_REACHED = "CAPACITY_REACHED"
    FACTORY_ERROR = "FACTORY_ERROR"
    SESSION_ERROR = "SESSION_ERROR"


class EnvError(HillclimbError):
    """An error reported by an environment server; `code` is its wire code."""

    code: ErrorCode = ErrorCode.EXECUTION_ERROR
    request: str | None = None
    """On the client: the message type it answered (reset, step, ...); None if unasked."""


class InvalidJSONError(EnvError, ValueError):
    code = ErrorCode.INVALID_JSON


class UnknownMessageTypeError(EnvError, ValueError):
    code = ErrorCode.UNKNOWN_TYPE


class MessageValidationError(EnvError, ValueError):
    """A message or action did not match its schema; `errors` lists what and where."""

    code = ErrorCode.VALIDATION_ERROR


class ExecutionError(EnvError, RuntimeError):
    """The environment raised while handling a message; the session stays open."""

    fault = Fault.ENVIRONMENT
    code = ErrorCode.EXECUTION_ERROR


class StepTimeoutError(ExecutionError, TimeoutError):
    """A reset, step or MCP call ran past the server's per-step limit; the session is closed."""


class CapacityReachedError(EnvError, RuntimeError):
    fault = Fault.SANDBOX
    code = ErrorCode.CAPACITY_REACHED


class FactoryError(EnvError, RuntimeError):
    """The server could not construct the environment for a new session."""

    fault = Fault.ENVIRONMENT
    code = ErrorCode.FACTORY_ERROR


class SessionError(EnvError, RuntimeError):
    """The session itself failed or was closed by the server (for example, reaped idle)."""

    fault = Fault.SANDBOX
    code = ErrorCode.SESSION_ERROR


ERROR_TYPES: dict[ErrorCode, type[EnvError]] = {
    ErrorCode.INVALID_JSON: InvalidJSONError,
    ErrorCode.UNKNOWN_TYPE: UnknownMessageTypeError,
    ErrorCode.VALIDATION_ERROR: MessageValidationError,
    ErrorCode.EXECUTION_ERROR: ExecutionError,
    ErrorCode.CAPACITY_REACHED: CapacityReachedError,
    ErrorCode.FACTORY_ERROR: FactoryError,
    ErrorCode.SESSION_ERROR: SessionError,
}


class ConnectionLostError(HillclimbError, ConnectionError):
    """The connection to an environment server dropped; its session state is gone."""

    fault = Fault.SANDBOX


class ConnectTimeoutError(HillclimbError, TimeoutError):
    """No connection to an environment server could be opened before the deadline."""

    fault = Fault.SANDBOX


class MessageTimeoutError(HillclimbError, TimeoutError):
    """The server did not answer a message in time; the connection was dropped."""

    fault = Fault.SANDBOX


class TLSError(HillclimbError, ConnectionError):
    """The TLS handshake failed: the server's certificate is not trusted, or names another host."""

    fault = Fault.RUN


class AuthenticationError(HillclimbError, PermissionError):
    """The server refused the bearer token (missing or wrong)."""

    fault = Fault.RUN


class TargetNotFoundError(HillclimbError, LookupError):
    """An environment name or import path did not resolve to an environment class."""


class EnvModuleNotFoundError(TargetNotFoundError, ModuleNotFoundError):
    """An environment's module is neither in the working directory nor installed; `module` names it."""

    module: str = ""


class ConfigError(HillclimbError, ValueError):
    """A configuration value is invalid; the message names the key in the user's spelling."""


class ModelNotFoundError(ConfigError, LookupError):
    """A model name resolved to nothing; the message lists every place that was tried."""


class ModelLoadError(ConfigError):
    """A model's files were found but are not a causal language model this project can run."""


def validation_problems(error: Any, prefix: str = "") -> str:
    """A pydantic `ValidationError`'s problems as `where.it.was: what; ...`, each place after `prefix`
    (a problem of the whole model is placed at `prefix` itself)."""
    return "; ".join(
        f"{(prefix + '.'.join(map(str, err['loc']))).rstrip('.')}: {err['msg'].removeprefix('Value error, ')}"
        for err in error.errors()
    )
