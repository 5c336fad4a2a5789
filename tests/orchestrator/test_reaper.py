"""`hillclimb sandbox reap --dry-run` on local sandboxes: what it would destroy and why, destroying nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.heartbeats import Heartbeat, runs_dir
from orchestrator.reaper import reap
from providers.contract import SandboxSpec, host_label
from providers.local import LocalProvider

REPO = Path(__file__).parents[2]

pytestmark = pytest.mark.root


def _dead_beat(run_id: str) -> Path:
    """A beat file of this host that no process holds: its process died without stopping it."""
    beat = runs_dir() / run_id / f"{host_label()}.4242.dead.beat"
    beat.parent.mkdir(parents=True)
    beat.write_text(json.dumps({"host": host_label(), "pid": 4242, "interval_s": 10}))
    return beat


async def test_a_dry_pass_names_each_doomed_sandbox_with_its_run_liveness_and_age(
    local_provider: LocalProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HILLCLIMB_HOME", str(tmp_path))
    beat = _dead_beat("dead-run")
    with Heartbeat("live-run"):
        old = await local_provider.create(SandboxSpec(env="probe", run_id="live-run", ttl_s=60))
        orphan = await local_provider.create(SandboxSpec(env="probe", run_id="dead-run"))
        kept = await local_provider.create(SandboxSpec(env="probe", run_id="live-run"))
        now = old.created_at.timestamp() + 100  # 40 s (give or take the label's whole seconds) past old's TTL
        report = await reap(local_provider, dry_run=True, now=now)
    assert report.examined == 3
    doomed = {d.id: d for d in report.doomed}  # in the provider's listing order
    assert {(d.id, d.reason, d.run_id, d.run_state) for d in doomed.values()} == {
        (old.id, "expired", "live-run", "alive"),
        (orphan.id, "orphaned", "dead-run", "gone"),
    }
    expired, orphaned = doomed[old.id], doomed[orphan.id]
    assert 39 <= expired.expired_for_s <= 41 and expired.age_s == pytest.approx(100)  # type: ignore[operator]
    assert expired.why() == f"expired {int(expired.expired_for_s)} s ago; run live-run is alive; age 1 min"  # type: ignore[arg-type]
    assert orphaned.expired_for_s is None and orphaned.why().startswith("run dead-run is gone; age 1 min")
    assert {sb.id for sb in await local_provider.list()} == {old.id, orphan.id, kept.id}  # nothing destroyed
    assert beat.exists()  # nor forgotten


async def test_the_command_says_why_and_leaves_every_sandbox(
    local_provider: LocalProvider, sandbox_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HILLCLIMB_HOME", str(tmp_path))
    _dead_beat("dead-run")
    with Heartbeat("live-run"):
        orphan = await local_provider.create(SandboxSpec(env="probe", run_id="dead-run"))
        kept = await local_provider.create(SandboxSpec(env="probe", run_id="live-run"))
        unknown = await local_provider.create(SandboxSpec(env="probe", run_id="elsewhere", ttl_s=1))
        deadline = time.monotonic() + 30
        while not unknown.expired() and time.monotonic() < deadline:  # its label has whole seconds
            time.sleep(0.05)
        done = subprocess.run(
            [sys.executable, "-m", "orchestrator", "sandbox", "reap", "--dry-run", "-o", f"root={sandbox_root}"],
            cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"},
        )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert f"would destroy {orphan.id} (run dead-run is gone; age " in done.stdout, done.stdout
    (expired,) = [line for line in lines if unknown.id in line]
    assert expired.startswith(f"would destroy {unknown.id} (expired ")
    assert "; run elsewhere has no heartbeat to judge by; age " in expired
    assert kept.id not in done.stdout
    assert lines[-1] == "examined 3, would destroy 2, kept 1"
    assert {sb.id for sb in await local_provider.list()} == {orphan.id, kept.id, unknown.id}
