"""A session pool emulated on this machine (local sandboxes behind a TLS endpoint that checks an
Entra-like token's audience), Resource Manager faked at its transport, and the aca provider
wired to both."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from providers.aca.provider import AcaProvider
from providers.local import LocalProvider
from tests.private_ca import PrivateCA
from tests.providers.aca.emulator import SessionPoolEmulator, hand_made_pool
from tests.providers.aca.fake_azure import FakeArm, FakeCredential

ENVIRONMENT = "/subscriptions/sub-1/resourceGroups/rg-1/providers/Microsoft.App/managedEnvironments/env-1"


@pytest.fixture
def ca(sandbox_root: Path) -> PrivateCA:
    return PrivateCA(sandbox_root)


@pytest.fixture
def arm() -> FakeArm:
    """Resource Manager, its pools answering at the emulator (set once it listens)."""
    return FakeArm(polls_to_finish=1)


@pytest.fixture
async def pool(sandbox_root: Path, ca: PrivateCA, arm: FakeArm) -> AsyncIterator[SessionPoolEmulator]:
    """The emulated pools: those ARM was asked to make, and two made by hand (`handmade` serving
    toy_terminal, `probes` the isolation probe)."""
    sandboxes = LocalProvider(root=sandbox_root / "sessions")
    by_hand = {"handmade": hand_made_pool("toy_terminal"), "probes": hand_made_pool("probe")}
    emulator = SessionPoolEmulator(
        sandboxes, lambda name: arm.pools.get(name) or by_hand.get(name), tls=ca.server_context()
    )
    await emulator.start()
    arm.endpoint_of = emulator.pool_endpoint
    yield emulator
    await emulator.close()
    await sandboxes.close()


def provider_options(ca: PrivateCA, **overrides: Any) -> dict[str, Any]:
    return {
        "subscription_id": "sub-1",
        "resource_group": "rg-1",
        "environment_id": ENVIRONMENT,
        "location": "westus2",
        "image": "reg.azurecr.io/hillclimb-sandbox:1",
        "ca_file": str(ca.cert_path),
        **overrides,
    }


@pytest.fixture
async def aca(ca: PrivateCA, arm: FakeArm, pool: SessionPoolEmulator) -> AsyncIterator[AcaProvider]:
    options = provider_options(ca, credential=FakeCredential(), management_transport=arm.transport(), arm_polling_s=0)
    provider = AcaProvider(**options)
    yield provider
    await provider.close()
