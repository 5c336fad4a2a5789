"""The aca provider against the emulated session pools: sandboxes as sessions, reached only by
their handle (HTTPS through the pool, an Entra token for the sessions' audience, the env token of
the provider's claim), the pool's back-pressure, cooldown, stop and list, a pool made by hand,
and the conformance kit."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from envs.client.credentials import Credential
from envs.client.http_client import http_request
from hillclimb.config.providers import options_model
from hillclimb.provider_errors import BadSpecError, FatalProviderError, RetryableProviderError
from providers.aca.provider import AcaProvider
from providers.aca.sessions import SessionPoolClient
from providers.contract import LABEL_RUN, SandboxSpec
from tests.private_ca import PrivateCA
from tests.providers.aca.conftest import provider_options
from tests.providers.aca.emulator import SessionPoolEmulator
from tests.providers.aca.fake_azure import ARM_SCOPE, FakeArm, FakeCredential
from tests.providers.cli import sandbox_cli
from tests.providers.conformance import ProviderContract

pytestmark = pytest.mark.root
REPO = Path(__file__).resolve().parents[3]
SESSIONS_SCOPE = "https://dynamicsessions.io/.default"


async def test_an_episode_through_the_pool_with_the_platforms_token_and_the_claims(
    aca: AcaProvider, pool: SessionPoolEmulator, arm: FakeArm
) -> None:
    sandbox = await aca.create(SandboxSpec(env="toy_terminal", run_id="run-1"))
    await aca.wait_ready(sandbox)
    pool_name = sandbox.id.split("/", 1)[0]
    assert sandbox.transport == "http"
    assert sandbox.endpoint.startswith(pool.pool_endpoint(pool_name) + "?identifier=hc-run-1-")
    async with sandbox.handle.client() as env:
        await env.reset()
        result = await env.step({"command": "ls"})
    assert "app.log" in str(result.observation)
    assert len(arm.puts()) == 1 and pool.allocations == 1
    (route, headers), *_ = pool.forwarded
    assert route == "/claim" and headers["hillclimb-env-token"] == sandbox.secret()
    identifier = sandbox.id.split("/", 1)[1]
    platform_only = (Credential(FakeCredential().get_token(SESSIONS_SCOPE).token),)
    url = f"{pool.pool_endpoint(pool_name)}?identifier={identifier}"
    status, _ = await http_request(url, "/schema", credentials=platform_only, ssl=sandbox.tls)
    assert status == 401  # any holder of the pool's token gets in: the claim's token still guards the server
    status, _ = await http_request(url, "/claim", method="POST", credentials=platform_only, ssl=sandbox.tls)
    assert status == 401  # and nobody claims it again
    await aca.destroy(sandbox.id)
    assert pool.sessions == {}


async def test_a_token_for_another_audience_is_refused(pool: SessionPoolEmulator, ca: PrivateCA) -> None:
    class ArmTokens(FakeCredential):
        def get_token(self, *scopes: str, **kwargs: Any) -> Any:
            return super().get_token(ARM_SCOPE)  # a credential set up for the wrong resource

    client = SessionPoolClient(pool.pool_endpoint("handmade"), ArmTokens(), ca_file=str(ca.cert_path))
    with pytest.raises(FatalProviderError, match="not authenticated"):
        await asyncio.to_thread(client.claim, "hc-r-0123456789abcdef", "token")
    client.close()
    assert pool.allocations == 0


async def test_a_full_pool_is_back_pressure_not_a_broken_sandbox(aca: AcaProvider, pool: SessionPoolEmulator) -> None:
    pool.max_concurrent_sessions = 2
    first, _ = [await aca.create(SandboxSpec(run_id="r")) for _ in range(2)]
    with pytest.raises(RetryableProviderError, match="no free session"):
        await aca.create(SandboxSpec(run_id="r"))
    await aca.destroy(first.id)
    assert await aca.create(SandboxSpec(run_id="r"))


async def test_idle_sessions_end_at_the_cooldown(aca: AcaProvider, pool: SessionPoolEmulator) -> None:
    pool.cooldown_s = 2.0  # long enough that the first list lands inside it on a loaded host
    sandbox = await aca.create(SandboxSpec(run_id="r"))
    assert [s.id for s in await aca.list()] == [sandbox.id]
    async with asyncio.timeout(30):  # a hang guard: listing does not count as use
        while await aca.list():
            await asyncio.sleep(0.1)
    assert pool.sessions == {}


async def test_sessions_are_listed_across_pages_and_by_run_from_another_process(
    aca: AcaProvider, pool: SessionPoolEmulator, ca: PrivateCA, arm: FakeArm
) -> None:
    pool.page_size = 2
    ours = [await aca.create(SandboxSpec(run_id="run_a.1")) for _ in range(2)]
    other = await aca.create(SandboxSpec(run_id="run-b"))
    assert {s.id for s in await aca.list()} == {s.id for s in [*ours, other]}
    reaper = AcaProvider(**provider_options(ca, credential=FakeCredential(), management_transport=arm.transport()))
    try:
        seen = await reaper.list({LABEL_RUN: "run_a.1"})  # what `hillclimb sandbox reap` sees: no tokens
        assert {s.id for s in seen} == {s.id for s in ours} and all(s.token is None for s in seen)
        assert all(s.expires_at is not None for s in seen)
        await reaper.destroy(other.id)
    finally:
        await reaper.close()
    assert other.id not in {s.id for s in await aca.list()}


async def test_a_pool_made_by_hand_needs_no_resource_manager(
    pool: SessionPoolEmulator, ca: PrivateCA, arm: FakeArm
) -> None:
    by_hand = AcaProvider(
        pool_endpoint=pool.pool_endpoint("handmade"), ca_file=str(ca.cert_path), credential=FakeCredential()
    )
    try:
        sandbox = await by_hand.create(SandboxSpec(env="toy_terminal"))
        await by_hand.wait_ready(sandbox)
        async with sandbox.handle.client() as env:
            await env.reset()
        with pytest.raises(
            BadSpecError,
            match="serves envs.builtin.toy_terminal.env:ToyTerminalEnv, not the spec's environment 'probe'",
        ):
            await by_hand.create(SandboxSpec(env="probe"))
        assert len(pool.sessions) == 1  # the mismatched session was stopped at once
    finally:
        await by_hand.close()
    assert arm.requests_seen == []


def test_options_are_checked_at_config_load_and_named_when_missing() -> None:
    model = options_model("aca")
    with pytest.raises(ValueError, match="cooldown_s"):
        model.model_validate({"pool_endpoint": "https://p", "cooldown_s": 10})
    with pytest.raises(ValueError, match="pool_prefix"):
        model.model_validate({"pool_endpoint": "https://p", "pool_prefix": "Has-Dashes"})
    with pytest.raises(ValueError, match="needs environment_id, location, image to make its session pools"):
        model.model_validate({"subscription_id": "s", "resource_group": "g"})  # at config load, not in a worker
    with pytest.raises(BadSpecError, match="needs resource_group, environment_id, location, image"):
        AcaProvider(subscription_id="s", credential=FakeCredential())
    with pytest.raises(BadSpecError, match="credential 'nope': name a callable"):
        AcaProvider(pool_endpoint="https://p", credential="nope")
    made = AcaProvider(pool_endpoint="https://p", credential="tests.providers.aca.fake_azure:FakeCredential")
    assert isinstance(made._credential, FakeCredential)


class TestAcaConformance(ProviderContract):
    """The kit's checks, the isolation probe included, on sessions of emulated pools."""

    @pytest.fixture
    async def provider(self, aca: AcaProvider) -> AsyncIterator[AcaProvider]:
        yield aca


@pytest.mark.ray
@pytest.mark.slow
async def test_hillclimb_rollout_runs_on_a_session_pool(pool: SessionPoolEmulator, ca: PrivateCA, tmp_path) -> None:
    """The whole rollout (Ray workers, their sandbox pools, every episode over the HTTP binding)
    on sessions of a pool made by hand; the credential named by import path, as a config can."""
    options = {
        "pool_endpoint": pool.pool_endpoint("handmade"),
        "ca_file": str(ca.cert_path),
        "credential": "tests.providers.aca.fake_azure:FakeCredential",
    }
    command = [
        sys.executable, "-m", "orchestrator", "rollout", "configs/rollout_toy.yaml", "--set", f"run.dir={tmp_path}",
        "--set", "provider.type=aca", "--set", "rollout.group_size=2", "--set", "eval.k=[1,2]",
        "--set", "ray.num_workers=1",
        *(arg for key, value in options.items() for arg in ("--set", f"provider.options.{key}={value}")),
    ]  # fmt: skip
    driver = await asyncio.create_subprocess_exec(
        *command, cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(driver.communicate(), 300)
    text = out.decode()
    assert driver.returncode == 0, text[-3000:]
    assert "pass@1" in text and pool.allocations >= 1, text[-2000:]
    finished = [route for route, _ in pool.forwarded if route == "/step"]
    assert finished, "no step went through the pool"
    assert pool.sessions == {}  # the run's sandboxes were stopped at its end


async def test_the_sandbox_commands_reach_a_pool(pool: SessionPoolEmulator, ca: PrivateCA) -> None:
    """probe reports from inside a session that no route out exists; ls and reap see sessions."""
    options = {
        "pool_endpoint": pool.pool_endpoint("probes"),
        "ca_file": str(ca.cert_path),
        "credential": "tests.providers.aca.fake_azure:FakeCredential",
    }
    flags = [arg for key, value in options.items() for arg in ("-o", f"{key}={value}")]
    code, out = await sandbox_cli("probe", "-p", "aca", *flags)
    assert code == 0, out
    assert "no route leaves the sandbox" in out and "FAIL" not in out, out
    by_hand = AcaProvider(**options)
    try:
        kept = await by_hand.create(SandboxSpec(env="probe", run_id="live-run"))
        code, out = await sandbox_cli("ls", "-p", "aca", *flags)
        assert code == 0 and kept.id in out and "live-run" in out, out
        code, out = await sandbox_cli("reap", "-p", "aca", *flags)
        assert code == 0 and kept.id not in out.split("examined")[0], out  # an unknown run: kept till it expires
    finally:
        await by_hand.close()
