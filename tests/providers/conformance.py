"""What every sandbox provider must do: a kit a provider plugin's own tests can import.

    from tests.providers.conformance import ProviderContract

    class TestMyProvider(ProviderContract):
        @pytest.fixture
        async def provider(self):
            p = MyProvider(...)
            yield p
            await p.close()

Each test runs one check (`check_*`, also callable directly) against a fresh provider; a
failure says, in words, which promise of the contract (`providers.contract.SandboxProvider`)
was broken. The checks start real sandboxes serving the `probe` environment, which every
provider must be able to run.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from providers.contract import LABEL_EXPIRES, LABEL_RUN, SandboxProvider, SandboxSpec
from providers.probe import probe

READY_S = 60.0


def _spec(**fields: Any) -> SandboxSpec:
    return SandboxSpec(env="probe", run_id=fields.pop("run_id", "conformance"), **fields)


async def check_create_ready_serve_destroy(provider: SandboxProvider) -> None:
    sandbox = await provider.create(_spec())
    try:
        await provider.wait_ready(sandbox, READY_S)
        async with sandbox.handle.client() as env:
            await env.reset()
            report = (await env.step({})).observation.get("report")
        assert report, f"{provider.name}: the probe environment answered a step without its report"
    finally:
        await provider.destroy(sandbox.id)
    listed = [s.id for s in await provider.list()]
    assert sandbox.id not in listed, f"{provider.name}: sandbox {sandbox.id} is still listed after destroy"


async def check_idempotent_create(provider: SandboxProvider) -> None:
    spec = _spec(idempotency_key="conformance/task-1/attempt-0")
    first, second = await asyncio.gather(provider.create(spec), provider.create(spec))
    try:
        assert first.id == second.id, (
            f"{provider.name}: two creates with one idempotency key made two sandboxes ({first.id}, {second.id})"
        )
    finally:
        for sandbox_id in {first.id, second.id}:
            await provider.destroy(sandbox_id)


async def check_destroy_twice(provider: SandboxProvider) -> None:
    sandbox = await provider.create(_spec())
    await provider.destroy(sandbox.id)
    try:
        await provider.destroy(sandbox.id)
    except Exception as e:  # noqa: BLE001 - any error is the finding
        raise AssertionError(
            f"{provider.name}: a second destroy of {sandbox.id} raised {e!r}; it must be a no-op"
        ) from e


async def check_list_by_selector(provider: SandboxProvider) -> None:
    ours = await provider.create(_spec(run_id="conformance-a", labels={"team": "blue"}))
    theirs = await provider.create(_spec(run_id="conformance-b"))
    try:
        selected = {s.id for s in await provider.list({LABEL_RUN: "conformance-a"})}
        assert selected == {ours.id}, f"{provider.name}: list by run id gave {selected}, expected only {ours.id}"
        by_label = {s.id for s in await provider.list({"team": "blue"})}
        assert by_label == {ours.id}, f"{provider.name}: list by a user label gave {by_label}"
    finally:
        await provider.destroy(ours.id)
        await provider.destroy(theirs.id)


async def check_labels_and_ttl(provider: SandboxProvider) -> None:
    before = time.time()
    sandbox = await provider.create(_spec(ttl_s=120, labels={"team": "blue"}))
    try:
        listed = {s.id: s for s in await provider.list()}[sandbox.id]
        for view in (sandbox, listed):
            assert view.labels.get("team") == "blue", f"{provider.name}: the user's label is missing: {view.labels}"
            assert view.run_id == "conformance", f"{provider.name}: no run id label: {view.labels}"
            expires = view.expires_at
            assert expires is not None and before + 100 <= expires <= time.time() + 140, (
                f"{provider.name}: {LABEL_EXPIRES} should be about 120 s from creation, got {expires}"
            )
    finally:
        await provider.destroy(sandbox.id)


async def check_token_secrecy(provider: SandboxProvider) -> None:
    sandbox = await provider.create(_spec())
    try:
        token = sandbox.secret()
        assert token, f"{provider.name}: the creating process got no token"
        await provider.wait_ready(sandbox, READY_S)
        places = {
            "repr": repr(sandbox),
            "handle": repr(sandbox.handle),
            "labels": str(sandbox.labels),
            "listed labels": str([s.labels for s in await provider.list()]),
            "log tail": await provider.log_tail(sandbox.id),
        }
        leaked = [where for where, text in places.items() if token in text]
        assert not leaked, f"{provider.name}: the sandbox's token shows in {leaked}"
    finally:
        await provider.destroy(sandbox.id)


async def check_a_cancelled_create_leaks_nothing(provider: SandboxProvider) -> None:
    spec = _spec(run_id="conformance-cancelled")
    creating = asyncio.create_task(provider.create(spec))
    await asyncio.sleep(0.005)
    creating.cancel()
    try:
        made = await creating
    except asyncio.CancelledError:
        made = None
    if made is not None:  # it finished first: the caller has it, and destroys it
        await provider.destroy(made.id)
    deadline = time.monotonic() + 60  # a Docker engine cleaning up under load takes its time
    while left := await provider.list({LABEL_RUN: "conformance-cancelled"}):
        if time.monotonic() > deadline:
            raise AssertionError(f"{provider.name}: a cancelled create left {[s.id for s in left]} behind")
        await asyncio.sleep(0.1)


async def check_log_tail(provider: SandboxProvider) -> None:
    sandbox = await provider.create(_spec())
    await provider.wait_ready(sandbox, READY_S)
    tail = await provider.log_tail(sandbox.id)
    assert isinstance(tail, str), f"{provider.name}: log_tail returned {type(tail).__name__}, not text"
    await provider.destroy(sandbox.id)
    gone = await provider.log_tail(sandbox.id)
    assert gone == "", f"{provider.name}: log_tail of a destroyed sandbox must be empty, got {gone[:80]!r}"


async def check_isolation_probe(provider: SandboxProvider) -> None:
    result = await probe(provider)
    failed = [f"{c.name}: {c.detail}" for c in result.checks if not c.ok]
    assert not failed, f"{provider.name}: isolation checks failed: {failed}"


class ProviderContract:
    """Subclass with a `provider` fixture; every check becomes a test. Reaping after a dead
    driver needs a driver process of the plugin's own: see tests/security/test_reaping.py."""

    async def test_create_ready_serve_destroy(self, provider: SandboxProvider) -> None:
        await check_create_ready_serve_destroy(provider)

    async def test_idempotent_create(self, provider: SandboxProvider) -> None:
        await check_idempotent_create(provider)

    async def test_destroy_twice(self, provider: SandboxProvider) -> None:
        await check_destroy_twice(provider)

    async def test_list_by_selector(self, provider: SandboxProvider) -> None:
        await check_list_by_selector(provider)

    async def test_labels_and_ttl(self, provider: SandboxProvider) -> None:
        await check_labels_and_ttl(provider)

    async def test_token_secrecy(self, provider: SandboxProvider) -> None:
        await check_token_secrecy(provider)

    async def test_a_cancelled_create_leaks_nothing(self, provider: SandboxProvider) -> None:
        await check_a_cancelled_create_leaks_nothing(provider)

    async def test_log_tail(self, provider: SandboxProvider) -> None:
        await check_log_tail(provider)

    async def test_isolation_probe(self, provider: SandboxProvider) -> None:
        await check_isolation_probe(provider)
