"""Run liveness on a cluster: a Lease per process holding a run's sandboxes, against the
emulated API server. A SIGKILLed holder's Lease stops being renewed, and one `hillclimb sandbox
reap --provider kubernetes` then removes its run's pods and nothing of a live or unknown run."""

from __future__ import annotations

import asyncio
import datetime
import os
import signal
import sys
import time
from typing import Any

import kmock
import pytest

from hillclimb.provider_errors import FatalProviderError
from orchestrator.heartbeats import HostRunLiveness, liveness_for
from providers.contract import LABEL_RUN, SandboxSpec
from providers.kubernetes.leases import RUN_LEASE, LeaseLiveness
from providers.kubernetes.provider import KubernetesProvider
from providers.liveness import RunState
from providers.local import LocalProvider
from tests.providers.cli import sandbox_cli
from tests.providers.kubernetes.emulator import NAMESPACE, ClusterEmulator, validate

LEASES = kmock.resource("coordination.k8s.io", "v1", "leases")


def _leases(api: ClusterEmulator) -> dict[str, dict[str, Any]]:
    return {key[2]: dict(stored.raw) for key, stored in api.objects.items() if key[0] == LEASES and not stored.deleted}


def _fast(provider: KubernetesProvider, interval_s: float) -> LeaseLiveness:
    return LeaseLiveness(provider._api, NAMESPACE, provider._translate, interval_s=interval_s)


async def test_a_beat_is_a_valid_lease_of_its_run_deleted_on_stop(provider: KubernetesProvider, api) -> None:
    liveness = provider.run_liveness
    assert await asyncio.to_thread(liveness.state, "r1") is RunState.UNKNOWN
    beat = await asyncio.to_thread(liveness.beat, "r1")
    (lease,) = _leases(api).values()
    validate(lease)
    assert lease["metadata"]["labels"] == {LABEL_RUN: "r1", "hillclimb.dev/role": RUN_LEASE}
    assert lease["spec"]["holderIdentity"].endswith(f".{os.getpid()}")
    assert lease["spec"]["leaseDurationSeconds"] == 30  # three renewals of 10 s
    assert await asyncio.to_thread(liveness.state, "r1") is RunState.ALIVE
    assert await asyncio.to_thread(liveness.state, "r2") is RunState.UNKNOWN  # another run's Lease is not r1's
    await asyncio.to_thread(beat.stop)
    assert _leases(api) == {}
    assert await asyncio.to_thread(liveness.state, "r1") is RunState.UNKNOWN


async def test_the_holder_renews_and_recreates_a_lease_removed_under_it(provider: KubernetesProvider, api) -> None:
    beat = await asyncio.to_thread(_fast(provider, 0.05).beat, "r1")
    try:
        first = _leases(api)[beat.name]["spec"]["renewTime"]
        deadline = time.monotonic() + 5
        while _leases(api)[beat.name]["spec"]["renewTime"] == first and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert _leases(api)[beat.name]["spec"]["renewTime"] > first
        await asyncio.to_thread(provider.run_liveness.delete, beat.name)  # a reaper that misjudged it
        await asyncio.to_thread(beat.renew)
        assert beat.name in _leases(api)
    finally:
        await asyncio.to_thread(beat.stop)


async def test_a_lease_past_its_duration_is_a_gone_run_and_forgotten(provider: KubernetesProvider, api) -> None:
    liveness = provider.run_liveness
    beat = await asyncio.to_thread(liveness.beat, "r1")
    beat._stop.set()  # the holder stops renewing without deleting: a killed process
    stale = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=31)
    renewal = {"spec": {"renewTime": stale.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}}
    await asyncio.to_thread(liveness._api.patch_namespaced_lease, beat.name, NAMESPACE, renewal)
    assert await asyncio.to_thread(liveness.state, "r1") is RunState.GONE
    other = await asyncio.to_thread(liveness.beat, "r1")  # a second holder of the same run lives on
    assert await asyncio.to_thread(liveness.state, "r1") is RunState.ALIVE
    await asyncio.to_thread(liveness.forget_gone, "r1")
    assert set(_leases(api)) == {other.name}
    await asyncio.to_thread(other.stop)


async def test_a_refused_lease_says_what_rbac_lacks(provider: KubernetesProvider, api) -> None:
    api[f"post /apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases"] << kmock.Response(
        status=403, payload={"kind": "Status", "message": "no"}
    )
    with pytest.raises(FatalProviderError, match="may not create leases in sandboxes"):
        await asyncio.to_thread(provider.run_liveness.beat, "r1")


HOLDER = """
import sys, time
from providers.kubernetes.leases import LeaseLiveness
from providers.kubernetes.provider import KubernetesProvider
provider = KubernetesProvider(namespace=sys.argv[2], api_url=sys.argv[1])
LeaseLiveness(provider._api, sys.argv[2], provider._translate, interval_s=0.2).beat(sys.argv[3])
print("beating", flush=True)
time.sleep(600)
"""


async def test_one_reap_removes_a_sigkilled_holders_sandboxes_and_nothing_else(provider: KubernetesProvider, api):
    url = str(api.url).rstrip("/")
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLDER, url, NAMESPACE, "dead", stdout=asyncio.subprocess.PIPE
    )
    assert holder.stdout is not None and await holder.stdout.readline() == b"beating\n"
    live_beat = await asyncio.to_thread(provider.run_liveness.beat, "live")
    try:
        dead = [await provider.create(SandboxSpec(run_id="dead")) for _ in range(2)]
        live = await provider.create(SandboxSpec(run_id="live"))
        unknown = await provider.create(SandboxSpec(run_id="never-beat"))
        holder.send_signal(signal.SIGKILL)
        await holder.wait()
        await asyncio.sleep(1.2)  # past the holder's lease duration (ceil(3 × 0.2 s) = 1 s)
        options = ("-p", "kubernetes", "-o", f"api_url={url}", "-o", f"namespace={NAMESPACE}")
        code, out = await sandbox_cli("reap", "--dry-run", *options)
        assert code == 0, out
        assert all(f"would destroy {s.id} (run dead is gone; age " in out for s in dead), out
        assert out.splitlines()[-1] == "examined 4, would destroy 2, kept 2"
        assert len(await provider.list()) == 4 and len(_leases(api)) == 2  # the dead Lease too: nothing forgotten
        code, out = await sandbox_cli("reap", *options)
        assert code == 0, out
        assert all(f"destroyed {s.id} (run dead is gone; age " in out for s in dead), out
        assert {s.id for s in await provider.list()} == {live.id, unknown.id}
        assert [lease["metadata"]["labels"][LABEL_RUN] for lease in _leases(api).values()] == ["live"]
    finally:
        await asyncio.to_thread(live_beat.stop)
        if holder.returncode is None:
            holder.kill()
            await holder.wait()


def test_workers_and_reapers_use_the_providers_leases(provider: KubernetesProvider, tmp_path) -> None:
    """A rollout worker beats, and `reap` judges, through `liveness_for(provider)`."""
    assert liveness_for(provider) is provider.run_liveness
    assert isinstance(liveness_for(LocalProvider(root=tmp_path)), HostRunLiveness)  # local: this host's beat files
