"""The provider conformance kit, on both built-in providers, and on a provider that breaks the
contract (its findings must name the promise broken, in words)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from providers.contract import Sandbox, SandboxSpec
from providers.local import LocalProvider
from tests.providers.conformance import (
    ProviderContract,
    check_destroy_twice,
    check_idempotent_create,
    check_list_by_selector,
)


@pytest.mark.root
class TestLocalConformance(ProviderContract):
    @pytest.fixture
    async def provider(self, sandbox_root: Path) -> AsyncIterator[LocalProvider]:
        provider = LocalProvider(root=sandbox_root)
        yield provider
        await provider.close()


@pytest.mark.root
class TestIngressConformance(ProviderContract):
    """Sandboxes reached only by their handle: the HTTP binding through a TLS ingress with its own auth."""

    @pytest.fixture
    async def provider(self, ingress_provider: Any) -> Any:
        return ingress_provider


@pytest.mark.docker
class TestDockerConformance(ProviderContract):
    @pytest.fixture
    async def provider(self, docker_provider: Any) -> Any:
        return docker_provider


class CarelessProvider(LocalProvider):
    """A local provider that forgets idempotency keys, fails a second destroy and ignores selectors."""

    name = "careless"

    async def create(self, spec: SandboxSpec) -> Sandbox:
        return await super().create(spec.model_copy(update={"idempotency_key": None}))

    async def destroy(self, sandbox_id: str) -> None:
        if not (self.root / sandbox_id).exists():
            raise FileNotFoundError(sandbox_id)
        await super().destroy(sandbox_id)

    async def list(self, selector: dict[str, str] | None = None) -> list[Sandbox]:
        return await super().list()


@pytest.mark.root
async def test_a_provider_that_breaks_the_contract_is_told_how(sandbox_root: Path) -> None:
    provider = CarelessProvider(root=sandbox_root)
    try:
        with pytest.raises(AssertionError, match="two creates with one idempotency key made two sandboxes"):
            await check_idempotent_create(provider)
        with pytest.raises(AssertionError, match="a second destroy of .* raised FileNotFoundError.*must be a no-op"):
            await check_destroy_twice(provider)
        with pytest.raises(AssertionError, match="careless: list by run id gave"):
            await check_list_by_selector(provider)
    finally:
        await provider.close()
