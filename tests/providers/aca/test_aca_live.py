"""Opt-in, against real Azure: make a session pool, run one episode in a session, delete the pool.

Skipped unless these name a subscription you may create pools in (and pay for):
    HILLCLIMB_ACA_SUBSCRIPTION, HILLCLIMB_ACA_RESOURCE_GROUP, HILLCLIMB_ACA_ENVIRONMENT_ID,
    HILLCLIMB_ACA_LOCATION, HILLCLIMB_ACA_IMAGE (the sandbox image, in a registry the pool pulls
    from), and optionally HILLCLIMB_ACA_REGISTRY (its server) and HILLCLIMB_ACA_REGISTRY_IDENTITY.
Credentials: DefaultAzureCredential (`az login`, a managed identity, the environment).
"""

from __future__ import annotations

import asyncio
import os

import pytest

from providers.contract import SandboxSpec

NEEDED = ("SUBSCRIPTION", "RESOURCE_GROUP", "ENVIRONMENT_ID", "LOCATION", "IMAGE")
MISSING = [f"HILLCLIMB_ACA_{name}" for name in NEEDED if not os.environ.get(f"HILLCLIMB_ACA_{name}")]

pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"live Azure test: set {', '.join(MISSING)} to run it")


async def test_a_real_pool_serves_an_episode_and_is_deleted() -> None:
    from providers.aca.provider import AcaProvider

    env = os.environ
    provider = AcaProvider(
        subscription_id=env["HILLCLIMB_ACA_SUBSCRIPTION"],
        resource_group=env["HILLCLIMB_ACA_RESOURCE_GROUP"],
        environment_id=env["HILLCLIMB_ACA_ENVIRONMENT_ID"],
        location=env["HILLCLIMB_ACA_LOCATION"],
        image=env["HILLCLIMB_ACA_IMAGE"],
        registry_server=env.get("HILLCLIMB_ACA_REGISTRY"),
        registry_identity=env.get("HILLCLIMB_ACA_REGISTRY_IDENTITY"),
        pool_prefix="hclive",
    )
    pool = None
    try:
        sandbox = await provider.create(SandboxSpec(env="toy_terminal", run_id="live-test", ttl_s=900))
        pool = sandbox.id.split("/", 1)[0]
        await provider.wait_ready(sandbox, timeout_s=300)
        async with sandbox.handle.client() as session:
            await session.reset()
            assert "app.log" in str((await session.step({"command": "ls"})).observation)
        await provider.destroy(sandbox.id)
    finally:
        try:
            if pool is not None:
                assert provider._management is not None
                await asyncio.to_thread(provider._management.delete, pool)
        finally:
            await provider.close()
