"""After a crash, one `hillclimb sandbox reap` leaves nothing behind.

A real `hillclimb rollout` driver is SIGKILLed while its workers hold sandboxes. Its
workers die with it (Ray ends a dead driver's actors); their heartbeats stop; the next
reap must remove every container, process, directory, uid slot and cgroup they had.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator.heartbeats import Heartbeat, RunState, run_state, runs_dir
from providers.contract import LABEL_RUN, Sandbox
from providers.registry import make_provider

REPO = Path(__file__).resolve().parents[2]


async def _wait_for(what: str, predicate: Any, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := await predicate():
            return value
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")


def _leftovers(provider_name: str, provider: Any, sandboxes: list[Sandbox], slots: dict[str, int | None]) -> list[str]:
    """Everything of `sandboxes` that still exists on this machine."""
    left = []
    for sandbox in sandboxes:
        if provider_name == "local":
            home = provider.root / sandbox.id
            left += [str(home)] if home.exists() else []
            if provider._cgroups is not None:
                left += [str(d) for d in provider._cgroups._dirs(sandbox.id) if d.exists()]
            claim = provider.root / ".slots" / str(slots.get(sandbox.id))
            left += [str(claim)] if claim.is_symlink() and os.readlink(claim) == sandbox.id else []
        else:
            left += [str(provider.root / sandbox.id)] if (provider.root / sandbox.id).exists() else []
            left += ["container " + sandbox.id] if provider._container_exists(sandbox.id) else []
    taken = [slot for slot in slots.values() if slot is not None]  # each slot: the server's, agent's, verifier's uid
    for uid in {provider.uid_base + role * provider.uid_slots + slot for slot in taken for role in range(3)}:
        left += [f"process {p.parent.name} of uid {uid}" for p in Path("/proc").glob("[0-9]*/status") if _uid(p) == uid]
    return left


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def _uid(status: Path) -> int | None:
    try:
        line = next(x for x in status.read_text().splitlines() if x.startswith("Uid:"))
    except (OSError, StopIteration):
        return None
    return int(line.split()[1])


@pytest.mark.ray
@pytest.mark.root
@pytest.mark.slow
@pytest.mark.parametrize("provider_name", ["local", pytest.param("docker", marks=pytest.mark.docker)])
async def test_one_reap_after_a_sigkilled_rollout_driver_leaves_nothing(
    provider_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    if provider_name == "docker":
        request.getfixturevalue("docker_engine")
    monkeypatch.setenv("HILLCLIMB_HOME", str(tmp_path / "home"))
    run_id = f"doomed-{provider_name}-{os.getpid()}"
    command = [
        sys.executable, "-m", "orchestrator", "rollout", "configs/rollout_toy.yaml", "--set", f"run.name={run_id}",
        "--set", f"run.dir={tmp_path / 'run'}", "--set", f"provider.type={provider_name}",
        "--set", "rollout.group_size=512",
    ]  # fmt: skip
    with open(tmp_path / "driver.log", "wb") as log:
        driver = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    request.addfinalizer(lambda: _kill_group(driver.pid))  # Ray's agents outlive a killed driver
    provider = make_provider(provider_name)
    try:
        await _kill_then_reap(provider_name, provider, driver, run_id)
    finally:  # on failure, leave no sandbox to disturb the tests after this one
        for sandbox in await provider.list({LABEL_RUN: run_id}):
            await provider.destroy(sandbox.id)
        await provider.close()


async def _kill_then_reap(provider_name: str, provider: Any, driver: subprocess.Popen[bytes], run_id: str) -> None:
    reap = [sys.executable, "-m", "orchestrator", "sandbox", "reap", "-p", provider_name]
    try:
        await _wait_for("the driver's sandboxes", lambda: provider.list({LABEL_RUN: run_id}), timeout_s=240)
        assert run_state(run_id) is RunState.ALIVE
        kept = subprocess.run(reap, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert kept.returncode == 0 and f"run {run_id} is gone" not in kept.stdout, kept.stdout + kept.stderr
        assert await provider.list({LABEL_RUN: run_id})  # a live run's sandboxes stay
    finally:
        driver.kill()
        driver.wait()

    async def gone() -> bool:
        return run_state(run_id) is RunState.GONE

    await _wait_for("the dead driver's workers to stop beating", gone, timeout_s=60)
    sandboxes = await provider.list({LABEL_RUN: run_id})  # every one it made, not just the first seen
    slots = (
        {sb.id: provider._read_meta(provider.root / sb.id).get("slot") for sb in sandboxes}
        if provider_name == "local"
        else {}
    )
    reaped = subprocess.run(reap, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert reaped.returncode == 0, reaped.stdout + reaped.stderr
    assert await provider.list({LABEL_RUN: run_id}) == []
    assert _leftovers(provider_name, provider, sandboxes, slots) == []
    assert not list((runs_dir() / run_id).glob("*.beat"))  # the dead beats are forgotten too


def test_a_run_is_alive_while_any_process_beats_and_gone_when_none_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HILLCLIMB_HOME", str(tmp_path))
    assert run_state("r") is RunState.UNKNOWN
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from orchestrator.heartbeats import Heartbeat; "
         "Heartbeat('r').start(); print('beating', flush=True); time.sleep(600)"],
        cwd=REPO, stdout=subprocess.PIPE, env={**os.environ, "HILLCLIMB_HOME": str(tmp_path)},
    )  # fmt: skip
    assert child.stdout is not None and child.stdout.readline() == b"beating\n"
    with Heartbeat("r"):
        assert run_state("r") is RunState.ALIVE
    assert run_state("r") is RunState.ALIVE  # the other process still beats
    child.kill()
    child.wait()
    child.stdout.close()
    assert run_state("r") is RunState.GONE  # SIGKILL drops the lock at once: no waiting for a timeout


def test_another_hosts_beat_is_judged_by_its_age(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HILLCLIMB_HOME", str(tmp_path))
    beat = runs_dir() / "r" / "other-host.123.ab.beat"
    beat.parent.mkdir(parents=True)
    beat.write_text('{"host": "other-host", "pid": 123, "interval_s": 10}')
    now = beat.stat().st_mtime
    assert run_state("r", now=now + 29) is RunState.ALIVE
    assert run_state("r", now=now + 31) is RunState.GONE


def test_the_heartbeat_touches_its_file_every_interval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HILLCLIMB_HOME", str(tmp_path))
    with Heartbeat("r", interval_s=0.05) as heartbeat:
        first = heartbeat.path.stat().st_mtime_ns
        deadline = time.monotonic() + 5
        while heartbeat.path.stat().st_mtime_ns == first and time.monotonic() < deadline:
            time.sleep(0.01)
        assert heartbeat.path.stat().st_mtime_ns != first
    assert not heartbeat.path.exists()
