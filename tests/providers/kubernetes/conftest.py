"""The emulated API server and a Kubernetes provider on it, its namespace's egress denied as
the chart does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from providers.kubernetes.egress import default_deny
from providers.kubernetes.provider import KubernetesProvider
from tests.providers.kubernetes.emulator import NAMESPACE, ClusterEmulator, cluster


@pytest.fixture
async def api() -> AsyncIterator[ClusterEmulator]:
    async with cluster() as emulator:
        yield emulator


@pytest.fixture
async def provider(api: ClusterEmulator) -> AsyncIterator[KubernetesProvider]:
    made = KubernetesProvider(namespace=NAMESPACE, api_url=str(api.url).rstrip("/"))
    create = made._networking.create_namespaced_network_policy
    await asyncio.to_thread(create, NAMESPACE, default_deny(NAMESPACE))
    yield made
    await made.close()
