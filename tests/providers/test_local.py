"""The local provider on this machine's real kernel: isolation, limits, lifecycle."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from envs.client.ws_client import EnvClient
from hillclimb.errors import ConnectionLostError
from hillclimb.provider_errors import BadSpecError, SandboxDiedError, UnsupportedPolicy
from providers.contract import EgressPolicy, Resources, SandboxSpec
from providers.local import LocalProvider
from providers.probe import probe

LIMITS_ENV = "tests.providers.limits_env:LimitsEnv"

pytestmark = pytest.mark.root


def _uid_pids(uid: int) -> set[int]:
    found = set()
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("Uid:") and int(line.split()[1]) == uid:
                found.add(int(status.parent.name))
    return found


def _wait_until(predicate, timeout_s: float = 30.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


async def _start(provider: LocalProvider, **spec: object):  # type: ignore[no-untyped-def]
    sandbox = await provider.create(SandboxSpec(**spec))  # type: ignore[arg-type]
    await provider.wait_ready(sandbox, timeout_s=20)
    return sandbox


async def test_probe_checks_all_pass(local_provider: LocalProvider) -> None:
    result = await probe(local_provider)
    failed = [f"{c.name}: {c.detail}" for c in result.checks if not c.ok]
    assert not failed, failed
    report = result.report
    assert report["interfaces"] == ["lo"]
    assert report["routes"] == []
    assert report["host_loopback"] == {"checked": True, "reachable": False, "error": "ECONNREFUSED"}
    assert report["host_uid"] >= local_provider.uid_base
    assert report["CapEff"] == "0000000000000000"


async def test_sandboxes_get_distinct_uids_and_private_dirs(local_provider: LocalProvider) -> None:
    a, b = await _start(local_provider, env=LIMITS_ENV), await _start(local_provider, env=LIMITS_ENV)
    async with a.handle.client() as ca, b.handle.client() as cb:
        ua, ub = (await ca.call_tool("whoami")).structured, (await cb.call_tool("whoami")).structured
    assert ua is not None and ub is not None
    assert ua["uid"] != ub["uid"] and min(ua["uid"], ub["uid"]) >= local_provider.uid_base
    assert ua["pid"] <= 3  # PID 1 is the sandbox's init, the server is its child
    work_a = local_provider.root / a.id / "work"
    assert work_a.stat().st_uid == ua["uid"] and (work_a.stat().st_mode & 0o777) == 0o700


async def test_wrong_token_is_refused(local_provider: LocalProvider) -> None:
    sandbox = await _start(local_provider, env="probe")
    from hillclimb.errors import AuthenticationError

    with pytest.raises(AuthenticationError):
        # A refusal is final and comes at once; a short deadline would race it on a loaded host.
        async with EnvClient(sandbox.endpoint, token="not-the-token", connect_timeout_s=30) as env:
            await env.reset()
    assert "token" not in repr(sandbox) or "**" in repr(sandbox)
    assert sandbox.secret() not in repr(sandbox)


async def test_destroy_kills_the_whole_tree(local_provider: LocalProvider) -> None:
    sandbox = await _start(local_provider, env=LIMITS_ENV)
    async with sandbox.handle.client() as env:
        uid = (await env.call_tool("whoami")).structured["uid"]  # type: ignore[index]
        forked = (await env.call_tool("fork_bomb", seconds=60)).structured
    assert forked is not None and forked["started"] > 0
    assert len(_uid_pids(uid)) > forked["started"]
    await local_provider.destroy(sandbox.id)
    assert _wait_until(lambda: not _uid_pids(uid)), f"left behind: {_uid_pids(uid)}"
    assert not (local_provider.root / sandbox.id).exists()
    assert await local_provider.list() == []


async def test_fork_bomb_is_contained_and_neighbours_unaffected(local_provider: LocalProvider) -> None:
    bomb = await _start(local_provider, env=LIMITS_ENV, resources=Resources(pids=64))
    neighbour = await _start(local_provider, env=LIMITS_ENV)
    async with bomb.handle.client() as env:
        result = (await env.call_tool("fork_bomb", seconds=30)).structured
    assert result is not None
    assert result["refused"] == "EAGAIN" and result["started"] < 64
    async with neighbour.handle.client() as env:
        assert (await env.call_tool("whoami")).structured is not None
    assert subprocess.run(["true"]).returncode == 0  # the host can still fork


async def test_memory_hog_is_killed_and_reported(local_provider: LocalProvider) -> None:
    hog = await _start(local_provider, env=LIMITS_ENV, resources=Resources(memory_mb=128))
    neighbour = await _start(local_provider, env=LIMITS_ENV)
    async with hog.handle.client() as env:
        assert (await env.call_tool("allocate", mb=16)).text == "allocated 16 MiB"
        with pytest.raises(ConnectionLostError):
            await env.call_tool("allocate", mb=512)
    report = local_provider.memory_report(hog.id)
    if local_provider.describe()["limits"] != "rlimits only":
        assert report["oom_kills"] >= 1, report
    async with neighbour.handle.client() as env:
        assert (await env.call_tool("allocate", mb=64)).text == "allocated 64 MiB"


async def test_idempotent_create_returns_the_same_sandbox(local_provider: LocalProvider) -> None:
    spec = SandboxSpec(env="probe", idempotency_key="run-7/task-3/attempt-0")
    first, second = await asyncio.gather(local_provider.create(spec), local_provider.create(spec))
    assert first.id == second.id and first.endpoint == second.endpoint
    assert len(await local_provider.list()) == 1
    other = await local_provider.create(SandboxSpec(env="probe", idempotency_key="run-7/task-3/attempt-1"))
    assert other.id != first.id


async def test_list_filters_by_labels(local_provider: LocalProvider) -> None:
    a = await local_provider.create(SandboxSpec(env="probe", run_id="run-a", labels={"team": "x"}))
    await local_provider.create(SandboxSpec(env="probe", run_id="run-b"))
    listed = await local_provider.list({"hillclimb.dev/run-id": "run-a"})
    assert [s.id for s in listed] == [a.id]
    assert listed[0].labels["team"] == "x" and listed[0].token is not None


async def test_time_to_live_is_enforced(local_provider: LocalProvider) -> None:
    sandbox = await _start(local_provider, env=LIMITS_ENV, ttl_s=1.5)
    async with sandbox.handle.client() as env:
        uid = (await env.call_tool("whoami")).structured["uid"]  # type: ignore[index]
    assert _wait_until(lambda: not _uid_pids(uid))  # a hang guard: without the TTL they would live on


async def test_bad_specs_are_refused(local_provider: LocalProvider) -> None:
    with pytest.raises(BadSpecError, match="no container images"):
        await local_provider.create(SandboxSpec(image="python:3.11-slim"))
    with pytest.raises(UnsupportedPolicy):
        await local_provider.create(SandboxSpec(egress=EgressPolicy(mode="allow_list", allow=("pypi.org",))))
    sandbox = await local_provider.create(SandboxSpec(env="no.such.module:Env"))
    with pytest.raises(SandboxDiedError, match="no.such.module"):
        await local_provider.wait_ready(sandbox, timeout_s=10)
    assert await local_provider.list() == []


DRIVER = """
import asyncio, json, sys
from providers.local import LocalProvider
from providers.contract import SandboxSpec

async def main():
    provider = LocalProvider(root=sys.argv[1])
    sandbox = await provider.create(SandboxSpec(env=sys.argv[2], run_id="doomed"))
    await provider.wait_ready(sandbox)
    print(json.dumps({"id": sandbox.id, "endpoint": sandbox.endpoint, "token": sandbox.secret()}), flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
"""


async def test_sandboxes_die_with_a_sigkilled_driver(sandbox_root: Path) -> None:
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(sandbox_root), LIMITS_ENV], stdout=subprocess.PIPE, cwd=os.getcwd()
    )
    assert driver.stdout is not None
    info = json.loads(driver.stdout.readline())
    async with EnvClient(info["endpoint"], token=info["token"]) as env:
        uid = (await env.call_tool("whoami")).structured["uid"]  # type: ignore[index]
        await env.call_tool("fork_bomb", seconds=60)
    assert _uid_pids(uid)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    driver.stdout.close()
    assert _wait_until(lambda: not _uid_pids(uid)), f"orphans: {_uid_pids(uid)}"
    # The directory stays until a reaper (or another provider) removes it.
    leftover = LocalProvider(root=sandbox_root)
    listed = await leftover.list({"hillclimb.dev/run-id": "doomed"})
    assert [s.id for s in listed] == [info["id"]]
    await leftover.destroy(info["id"])
    assert await leftover.list() == []
    await leftover.close()


FROM_A_CHECKOUT = """
import asyncio, json, sys
import providers.local
from envs.client.ws_client import EnvClient
from providers.contract import SandboxSpec
from providers.local import LocalProvider

async def main():
    provider = LocalProvider(root=sys.argv[1])
    try:
        sandbox = await provider.create(SandboxSpec(env="toy_terminal"))
        await provider.wait_ready(sandbox, timeout_s=20)
        async with sandbox.handle.client() as env:
            result = await env.reset(seed=0)
        print(json.dumps({"code": providers.local.__file__, "observation": result.observation}))
    finally:
        await provider.close()

asyncio.run(main())
"""


@pytest.mark.parametrize("cwd", ["unrelated", "/tmp", "/"])
def test_sandboxes_start_from_a_checkout_anywhere(sandbox_root: Path, tmp_path: Path, cwd: str) -> None:
    """A clone in a private `mktemp -d` under /tmp (which the sandbox covers with its own tmpfs),
    run from an unrelated working directory, or from one the sandbox's own root has (/tmp, /):
    the sandbox still sees the code it was forked from."""

    repo = Path(__file__).resolve().parents[2]
    private = Path(tempfile.mkdtemp())  # 0700, like `mktemp -d`
    try:
        checkout = private / "clone"
        for package in ("envs", "providers"):
            shutil.copytree(repo / package, checkout / package, ignore=shutil.ignore_patterns("__pycache__"))
        elsewhere = tmp_path / "cwd" if cwd == "unrelated" else Path(cwd)
        elsewhere.mkdir(mode=0o700, exist_ok=True)
        done = subprocess.run(
            [sys.executable, "-c", FROM_A_CHECKOUT, str(sandbox_root)],
            cwd=elsewhere,
            env={**os.environ, "PYTHONPATH": str(checkout)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        reply = json.loads(done.stdout)
        assert reply["code"] == str(checkout / "providers" / "local" / "__init__.py")
        assert reply["observation"]["prompt"], reply
    finally:
        shutil.rmtree(private, ignore_errors=True)


async def test_a_provider_out_of_uid_slots_says_so_as_a_capacity_error(sandbox_root: Path) -> None:
    from hillclimb.provider_errors import CapacityError

    provider = LocalProvider(root=sandbox_root, uid_slots=1)
    try:
        await provider.create(SandboxSpec(env="probe"))
        with pytest.raises(CapacityError, match="all 1 sandbox uid slots are taken"):
            await provider.create(SandboxSpec(env="probe"))
        assert len(await provider.list()) == 1  # the refused create left nothing behind
    finally:
        await provider.close()


def test_removing_a_sandbox_that_does_not_exist_is_an_error_not_a_success() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", "sandbox", "rm", "lc-000000000000"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "SandboxNotFound: no sandbox lc-000000000000 on provider 'local'" in done.stderr
    assert "destroyed" not in done.stdout


async def test_concurrent_destroys_of_one_sandbox_remove_it_once(local_provider: LocalProvider) -> None:
    sandbox = await _start(local_provider, env=LIMITS_ENV)
    reaper = LocalProvider(root=local_provider.root)  # another process's view of the same root
    meta = json.loads((local_provider.root / sandbox.id / "meta.json").read_text())
    await asyncio.gather(*(p.destroy(sandbox.id) for p in (local_provider, reaper, local_provider, reaper)))
    assert not (local_provider.root / sandbox.id).exists()
    assert not (local_provider.root / ".slots" / str(meta["slot"])).is_symlink()
    assert not _uid_pids(local_provider.uid_base + meta["slot"])
    await reaper.close()


def test_cleaning_up_as_a_user_without_root_unmounts_nothing_and_does_not_fail() -> None:
    # Without root nothing of ours is mounted on the host, and umount2 would only say EPERM.
    # The uid is dropped after the import: the checkout may sit where that uid cannot read.
    check = (
        "import os; from providers.local.isolation import unmount; os.setgroups([]); "
        "os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 65534); unmount('/tmp'); print('fine')"
    )
    done = subprocess.run(
        [sys.executable, "-c", check],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.strip() == "fine", done.stderr[-2000:]


SERVE_ONE = """
import asyncio, sys
from providers.local import LocalProvider
from providers.contract import SandboxSpec

async def main():
    provider = LocalProvider(root=sys.argv[1])
    try:
        sandbox = await provider.create(SandboxSpec(env="toy_terminal"))
        await provider.wait_ready(sandbox, timeout_s=30)
        async with sandbox.handle.client() as env:
            print((await env.reset(task_id="cat-app-order")).observation["prompt"], flush=True)
    finally:
        await provider.close()

asyncio.run(main())
"""


def test_import_paths_side_by_side_reach_the_server(sandbox_root: Path, tmp_path: Path) -> None:
    """PYTHONPATH=a:b with a and b siblings under a directory the sandbox's root lacks: both are
    bound behind the one top directory made for the first (this once failed on the second)."""
    siblings = [tmp_path / "libs" / name for name in ("a", "b")]
    for path in siblings:
        path.mkdir(parents=True)
    python_path = os.pathsep.join([os.getcwd(), *map(str, siblings)])
    done = subprocess.run(
        [sys.executable, "-c", SERVE_ONE, str(sandbox_root)],
        env={**os.environ, "PYTHONPATH": python_path},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "app.log" in done.stdout
