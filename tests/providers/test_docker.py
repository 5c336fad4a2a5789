"""The Docker provider on a real engine: isolation, hardening, limits, secrecy, lifecycle."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

import docker
from envs.digest import IMAGE_LABEL, envs_digest, package_digest, package_label
from hillclimb.provider_errors import BadSpecError, UnsupportedPolicy
from providers.contract import LABEL_RUN, EgressPolicy, Resources, SandboxSpec
from providers.docker import DEFAULT_IMAGE, NAME_PREFIX, DockerProvider
from providers.probe import probe

pytestmark = pytest.mark.docker


def _container(sandbox_id: str) -> docker.models.containers.Container:
    client = docker.from_env()
    try:
        return client.containers.get(NAME_PREFIX + sandbox_id)
    finally:
        client.close()


async def _shell(provider: DockerProvider, **spec: object):  # type: ignore[no-untyped-def]
    sandbox = await provider.create(SandboxSpec(env="terminal", **spec))  # type: ignore[arg-type]
    await provider.wait_ready(sandbox, timeout_s=60)
    return sandbox


async def _run(sandbox, command: str) -> dict:  # type: ignore[no-untyped-def]
    async with sandbox.handle.client() as env:
        await env.reset(seed=0)
        return (await env.step({"command": command})).observation


async def test_probe_checks_all_pass(docker_provider: DockerProvider) -> None:
    result = await probe(docker_provider)
    failed = [f"{c.name}: {c.detail}" for c in result.checks if not c.ok]
    assert not failed, failed
    assert result.report["interfaces"] == ["lo"] and result.report["routes"] == []
    assert result.report["host_loopback"]["reachable"] is False


async def test_hardening_is_read_back_from_the_engine(docker_provider: DockerProvider) -> None:
    sandbox = await docker_provider.create(
        SandboxSpec(env="probe", resources=Resources(cpu=0.5, memory_mb=256, pids=128))
    )
    await docker_provider.wait_ready(sandbox)
    attrs = _container(sandbox.id).attrs
    host = attrs["HostConfig"]
    assert host["NetworkMode"] == "none"
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"] and sorted(host["CapAdd"]) == ["KILL", "SETGID", "SETUID"]  # the warden's
    assert any(opt.startswith("no-new-privileges") for opt in host["SecurityOpt"])
    assert host["Privileged"] is False and host["Init"] is True and host["IpcMode"] == "private"
    assert host["Memory"] == 256 * 2**20 and host["MemorySwap"] == 256 * 2**20
    assert host["NanoCpus"] == 500_000_000 and host["PidsLimit"] == 128
    assert set(host["Tmpfs"]) == {"/work", "/verify", "/tmp"} and "size=1024m" in host["Tmpfs"]["/work"]
    assert "uid=10004" in host["Tmpfs"]["/verify"] and "mode=0700" in host["Tmpfs"]["/verify"]  # the verifier's
    assert attrs["Config"]["User"] == "0:0"  # the warden, which starts the server, the agent and the verifier
    assert attrs["Config"]["Cmd"][-6:] == [
        "--server-user", "10001:10001:10001", "--agent-user", "10002:10002", "--verifier-user", "10004:10004"
    ]  # fmt: skip
    labels = attrs["Config"]["Labels"]
    assert labels[LABEL_RUN] == "adhoc" and "hillclimb.dev/owner" in labels and "hillclimb.dev/expires-at" in labels


async def test_the_token_never_leaks(docker_provider: DockerProvider) -> None:
    sandbox = await _shell(docker_provider)
    token = sandbox.secret()
    assert token and token not in repr(sandbox)
    observation = await _run(sandbox, "env; cat /run/hillclimb/token 2>&1; ls -la /run/hillclimb")
    container = _container(sandbox.id)
    assert token not in json.dumps(container.attrs)
    assert token not in json.dumps(container.labels)
    assert token not in container.logs().decode(errors="replace")
    assert token not in observation["output"]  # the server read its token file and deleted it
    assert not (docker_provider.root / sandbox.id / "sock" / "token").exists()


async def test_fork_bomb_is_contained_and_neighbours_unaffected(docker_provider: DockerProvider) -> None:
    bomb, neighbour = await _shell(docker_provider, resources=Resources(pids=64)), await _shell(docker_provider)
    observation = await _run(bomb, "for i in $(seq 200); do sleep 30 & done; echo spawned")
    assert "Resource temporarily unavailable" in observation["output"]
    assert _container(bomb.id).attrs["HostConfig"]["PidsLimit"] == 64
    assert (await _run(neighbour, "echo alive"))["output"] == "alive\n"
    assert subprocess.run(["true"]).returncode == 0


async def test_memory_hog_is_killed_and_reported(docker_provider: DockerProvider) -> None:
    hog, neighbour = await _shell(docker_provider, resources=Resources(memory_mb=128)), await _shell(docker_provider)
    observation = await _run(hog, "python3 -c 'b = bytearray(512 * 2**20); b[::4096] = bytes(len(b) // 4096)'")
    assert observation["exit_code"] == 137  # SIGKILL from the OOM killer
    state = docker_provider.inspect_state(hog.id)
    assert state["status"] == "running"  # the server itself survived: the hog was the biggest process
    assert (await _run(hog, "echo still-serving"))["output"] == "still-serving\n"
    assert (await _run(neighbour, "echo alive"))["output"] == "alive\n"


async def test_idempotent_create_gives_one_container(docker_provider: DockerProvider) -> None:
    spec = SandboxSpec(env="probe", idempotency_key="run-9/task-1/attempt-0")
    first = await docker_provider.create(spec)
    second = await docker_provider.create(spec)
    assert first.id == second.id
    listed = await docker_provider.list({"hillclimb.dev/key": spec.key_digest})
    assert [s.id for s in listed] == [first.id]


async def test_a_provider_lists_only_the_sandboxes_under_its_own_root(docker_provider: DockerProvider) -> None:
    """Two providers on one engine (a test run beside a benchmark, two users): each sees only the
    sandboxes it can reach, so one never reports, or reaps, the other's as its own."""
    with tempfile.TemporaryDirectory(prefix="hc-", dir="/tmp") as other_root:
        other = DockerProvider(root=other_root)
        try:
            theirs = await other.create(SandboxSpec(env="probe", run_id="neighbour"))
            assert await docker_provider.list() == []
            ours = await docker_provider.create(SandboxSpec(env="probe", run_id="neighbour"))
            assert [s.id for s in await docker_provider.list({LABEL_RUN: "neighbour"})] == [ours.id]
            assert [s.id for s in await other.list()] == [theirs.id]
        finally:
            await other.close()


async def test_a_sandbox_removed_while_others_are_listed_does_not_fail_the_listing(
    docker_provider: DockerProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reaper lists while sandboxes are destroyed: the listing must not inspect each container
    afterwards, where one removed in between answers 404 (seen as a failed reap under load)."""
    sandbox = await docker_provider.create(SandboxSpec(env="probe"))

    def removed_meanwhile(*args: object, **kwargs: object) -> None:
        raise docker.errors.NotFound("No such container (removed after the list)")

    monkeypatch.setattr(docker_provider._client.api, "inspect_container", removed_meanwhile)
    assert [s.id for s in await docker_provider.list()] == [sandbox.id]


async def test_bad_specs_get_clear_errors(docker_provider: DockerProvider) -> None:
    with pytest.raises(BadSpecError, match="image not found"):
        await docker_provider.create(SandboxSpec(image="hillclimb/no-such-image:1"))
    with pytest.raises(BadSpecError, match="(?i)cpu"):
        await docker_provider.create(SandboxSpec(resources=Resources(cpu=48)))
    with pytest.raises(UnsupportedPolicy):
        await docker_provider.create(SandboxSpec(egress=EgressPolicy(mode="allow_list", allow=("10.0.0.1",))))
    assert await docker_provider.list() == []


async def test_an_image_built_from_other_environment_code_is_refused(
    docker_provider: DockerProvider, sandbox_root: Path
) -> None:
    client = docker.from_env()
    stale = "hillclimb/sandbox:stale-test"
    # The real image, relabelled as if built from older code (built offline from the local image).
    client.images.build(
        fileobj=io.BytesIO(f"FROM {DEFAULT_IMAGE}\n".encode()),
        tag=stale,
        labels={IMAGE_LABEL: "0123456789abcdef"},
        network_mode="none",
        rm=True,
    )
    try:
        assert client.images.get(DEFAULT_IMAGE).labels.get(IMAGE_LABEL) == envs_digest()  # built from this checkout
        with pytest.raises(BadSpecError, match=r"other environment code.*0123456789abcdef.*hillclimb image build"):
            await docker_provider.create(SandboxSpec(env="probe", image=stale))
        assert await docker_provider.list() == []
        lenient = DockerProvider(root=sandbox_root / "lenient", check_image=False)
        sandbox = await lenient.create(SandboxSpec(env="probe", image=stale))
        await lenient.wait_ready(sandbox, timeout_s=60)
        await lenient.destroy(sandbox.id)
        await lenient.close()
    finally:
        client.images.remove(stale, force=True)
        client.close()


async def test_an_image_without_the_users_environment_package_is_refused(
    docker_provider: DockerProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An environment from a user's package runs only in an image that holds that package's
    code as it is here (the label `hillclimb image build --env` writes)."""
    package = tmp_path / "hc_user_env"
    package.mkdir()
    (package / "__init__.py").write_text("class UserEnv:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    client = docker.from_env()
    tags = {"missing": {}, "stale": {package_label("hc_user_env"): "0123456789abcdef"}}
    tags["current"] = {package_label("hc_user_env"): package_digest("hc_user_env")}
    for name, labels in tags.items():  # the real image, relabelled (built offline from the local image)
        client.images.build(
            fileobj=io.BytesIO(f"FROM {DEFAULT_IMAGE}\n".encode()),
            tag=f"hillclimb/sandbox:{name}-test",
            labels={IMAGE_LABEL: envs_digest(), **labels},
            network_mode="none",
            rm=True,
        )
    try:
        spec = SandboxSpec(env="hc_user_env:UserEnv", image="hillclimb/sandbox:missing-test")
        with pytest.raises(BadSpecError, match=r"does not hold hc_user_env.*image build --env"):
            await docker_provider.create(spec)
        with pytest.raises(BadSpecError, match=r"other code of hc_user_env \(digest 0123456789abcdef"):
            await docker_provider.create(spec.model_copy(update={"image": "hillclimb/sandbox:stale-test"}))
        docker_provider._check_image("hillclimb/sandbox:current-test", spec.env)  # holds this code: accepted
        assert await docker_provider.list() == []
    finally:
        for name in tags:
            client.images.remove(f"hillclimb/sandbox:{name}-test", force=True)
        client.close()


async def test_blocking_engine_calls_stay_off_the_event_loop(docker_provider: DockerProvider) -> None:
    """Every request to the engine (each a blocking HTTP call) is made from a worker thread: a
    check of where, not of how long the loop stalled, which a loaded host would decide."""
    on_loop: list[str] = []
    api = docker_provider._client.api
    send = api.send

    def recording_send(request, **kwargs):  # type: ignore[no-untyped-def]
        try:
            asyncio.get_running_loop()
            on_loop.append(f"{request.method} {request.path_url}")
        except RuntimeError:  # no loop in this thread: a worker thread, as it should be
            pass
        return send(request, **kwargs)

    api.send = recording_send
    try:
        sandboxes = await asyncio.gather(*(docker_provider.create(SandboxSpec(env="probe")) for _ in range(3)))
        await asyncio.gather(*(docker_provider.wait_ready(s) for s in sandboxes))
        await docker_provider.list()
        await asyncio.gather(*(docker_provider.destroy(s.id) for s in sandboxes))
    finally:
        api.send = send
    assert on_loop == []


async def test_a_directory_whose_container_is_gone_is_still_listed_and_then_removed(
    docker_provider: DockerProvider,
) -> None:
    sandbox = await docker_provider.create(SandboxSpec(env="probe", run_id="half-gone"))
    _container(sandbox.id).remove(force=True)  # say, by hand, or its driver died mid-destroy
    assert [sb.id for sb in await docker_provider.list({LABEL_RUN: "half-gone"})] == [sandbox.id]
    await asyncio.gather(docker_provider.destroy(sandbox.id), docker_provider.destroy(sandbox.id))
    assert not (docker_provider.root / sandbox.id).exists()
    assert await docker_provider.list({LABEL_RUN: "half-gone"}) == []


async def test_a_directory_without_labels_expires_an_hour_after_it_was_made(docker_provider: DockerProvider) -> None:
    from orchestrator.reaper import reap

    stray = docker_provider.root / "dk-0123456789ab"
    (stray / "sock").mkdir(parents=True)
    os.utime(stray, (time.time() - 3700, time.time() - 3700))  # made more than an hour ago, never labelled
    report = await reap(docker_provider)
    assert report.expired == ["dk-0123456789ab"] and not stray.exists()


async def test_the_log_tail_is_the_end_of_the_containers_output(docker_provider: DockerProvider) -> None:
    sandbox = await _shell(docker_provider)
    # The server's stderr is the container's log (the agent's commands cannot write there):
    # its last line so far says where it serves.
    await _run(sandbox, "echo hello")
    tail = await docker_provider.log_tail(sandbox.id)
    assert tail.rstrip().endswith("serving terminal on unix:///run/hillclimb/env.sock"), tail
    await docker_provider.destroy(sandbox.id)
    assert await docker_provider.log_tail(sandbox.id) == ""  # gone: nothing, not an error
