"""`RemotePolicy`: what every policy behind an HTTP server shares — the retrying client, the
version it stamps (the server owns the weights), concurrent requests, and `async with`.
Subclasses say how one request is asked (`_generate_one`)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Self

from hillclimb.config.rollout import SamplingParams
from trainers.policy.base import GenerateRequest, Generation
from trainers.policy.errors import WeightsNotUpdatableError
from trainers.policy.http_retry import RetryingClient
from trainers.tokenizer import Tokenizer


class RemotePolicy:
    """A model served elsewhere as a `Policy`. Use as `async with`, or call `aclose()`."""

    def __init__(
        self,
        base_url: str,
        model: str,
        tokenizer: Tokenizer,
        *,
        api_key: str | None,
        version: int,
        timeout_s: float,
        max_retries: int,
        backoff_s: float,
        max_backoff_s: float,
        max_connections: int,
    ) -> None:
        """`base_url` ends in `/v1`; `model` is the name the server serves; `version` is what
        every generation is stamped with (the server's weights do not change under this client);
        at most `max_connections` requests are in flight, the rest queue."""
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._tokenizer = tokenizer
        self._version = version
        self._http = RetryingClient(
            self.base_url,
            api_key=api_key,
            timeout_s=timeout_s,
            max_retries=max_retries,
            backoff_s=backoff_s,
            max_backoff_s=max_backoff_s,
            max_connections=max_connections,
        )

    @property
    def version(self) -> int:
        return self._version

    @property
    def tokenizer(self) -> Tokenizer:
        return self._tokenizer

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def generate(self, requests: list[GenerateRequest], sampling: SamplingParams) -> list[Generation]:
        return list(await asyncio.gather(*(self._generate_one(request, sampling) for request in requests)))

    async def _generate_one(self, request: GenerateRequest, sampling: SamplingParams) -> Generation:
        raise NotImplementedError

    async def update_weights(self, version: int, weights: Mapping[str, Any]) -> None:
        raise WeightsNotUpdatableError(
            f"the weights behind {self.base_url} are managed by that server; {type(self).__name__} cannot load "
            f"version {version}. Use it for evaluation, or an in-process engine (hf, vllm) for training"
        )
