"""Credentials: a secret and the header it travels in, rendered afresh for every connection and request.

The env server's token goes in `Authorization`, or in `Hillclimb-Env-Token` when a platform
in front (an ingress, a session pool) takes `Authorization` for its own token. A credential
is a fixed secret or a function that returns a fresh one (e.g. `azure-identity`'s bearer
token provider); it is asked again for every connection and every HTTP request, so a
token that expires is replaced without the caller noticing.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from envs.wire.http import AUTHORIZATION

SecretSource = str | Callable[[], str | Awaitable[str]]


@dataclass(frozen=True, slots=True)
class Credential:
    """A secret and the header it travels in. `scheme` prefixes the value (`Bearer`), or not ("")."""

    source: SecretSource = field(repr=False)
    header: str = AUTHORIZATION
    scheme: str = "Bearer"

    def __post_init__(self) -> None:
        if isinstance(self.source, str) and not self.source:
            raise ValueError(f"the credential for {self.header} is empty")
        if not self.header or any(c in self.header for c in ": \r\n"):
            raise ValueError(f"{self.header!r} is not a header name")

    @classmethod
    def env_token(cls, token: str, *, header: str = AUTHORIZATION) -> Credential:
        """The env server's own token, in `Authorization` (as a bearer token) or in `header`."""
        return cls(token, header, "Bearer" if header.lower() == AUTHORIZATION.lower() else "")

    async def render(self) -> tuple[str, str]:
        """(header, value), with a refreshed secret when the source is a function."""
        secret = self.source
        if not isinstance(secret, str):
            secret = secret()
            if inspect.isawaitable(secret):
                secret = await secret
        if not isinstance(secret, str) or not secret or any(c in secret for c in "\r\n"):
            raise ValueError(f"the credential source for {self.header} returned no usable secret")
        return self.header, f"{self.scheme} {secret}" if self.scheme else secret


async def render_headers(credentials: tuple[Credential, ...]) -> list[tuple[str, str]]:
    return [await credential.render() for credential in credentials]
