"""`DockerProvider`: one hardened container per sandbox, on a real Docker engine.

Default-deny egress is the absence of a network: containers run with `network_mode=none`
and only `lo`. The orchestrator reaches the env server through a Unix socket in a host
directory bind-mounted at /run/hillclimb. The token travels as a file in that directory
(mode 0400, read once and deleted by the server), so it shows in no label, no
environment variable, no command line and no `docker inspect` output.

On the host, under the provider's root (0711):

    <root>/<id>/meta.json    the sandbox's labels, 0600: a reaper finds the directory's run
                             even when its container is gone
    <root>/<id>/sock/        bind-mounted at /run/hillclimb, owned by the container's uid; as
                             root, a 256 KiB tmpfs, so the container cannot fill the host's disk

Hardening by default: the server, the agent's commands and the verifier under three non-root
uids (the container's first process keeps only the capabilities to start them: see
`envs.sandbox.warden`), a read-only root filesystem with size-limited tmpfs for /work (the agent's),
/verify (the verifier's) and /tmp,
every other capability dropped, no-new-privileges, an init process,
and the memory / CPU / pids limits of the spec. Every container carries its run id,
owner and expiry as labels; a create with an idempotency key uses a container name
derived from the key, so the engine itself guarantees one container per key.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

import docker.errors
import requests.exceptions
from pydantic import SecretStr

import docker
from envs.digest import IMAGE_LABEL, envs_digest, package_digest, package_label
from hillclimb.config.providers import SANDBOX_IMAGE, DockerOptions
from hillclimb.provider_errors import (
    BadSpecError,
    CapacityError,
    FatalProviderError,
    ProviderError,
    RetryableProviderError,
    UnsupportedPolicy,
)
from providers.contract import LABEL_CREATED, LABEL_EXPIRES, LABEL_PREFIX, LABEL_RUN, Sandbox, SandboxSpec
from providers.local.isolation import mount_tmpfs, unmount
from providers.readiness import READY_TIMEOUT_S, wait_healthy
from providers.toolkit import InflightCalls, KeyLocks, create_in_thread, utc_from_timestamp

log = logging.getLogger("hillclimb.providers.docker")

DEFAULT_IMAGE = SANDBOX_IMAGE
CONTAINER_UID = 10001
SERVER_GID = 10001
"""The image's group that may read the server's code and task suites (/opt/hillclimb)."""
AGENT_UID = 10002
VERIFIER_UID = 10004
"""What decides a reward runs under a uid of its own (see `envs.sandbox.verification`); 10003 is the pods'
token group."""
WARDEN_CAPABILITIES = ["SETUID", "SETGID", "KILL"]
"""All the container's first process keeps: to start the server and the agent's commands under their uids."""
SOCKET_DIR = "/run/hillclimb"
NAME_PREFIX = "hillclimb-"
ORPHAN_DIR_TTL_S = 3600
SOCK_DIR_KB = 256
LABEL_ROOT = LABEL_PREFIX + "root"
"""A digest of the provider's root: its sandboxes are reachable only through sockets under that
root, so a provider lists only its own, never another's on the same engine (a second user, a
test run beside a benchmark)."""


def default_root() -> Path:
    return Path(f"/tmp/hillclimb-{os.getuid()}") / "docker"


def _translate(e: Exception, what: str) -> ProviderError:
    """Docker SDK errors → typed provider errors (messages truncated, never with secrets).

    429 (too many requests) and 409 (a conflict, e.g. a container still being removed) pass
    with time: retryable, after the engine's Retry-After when it sends one. Other 4xx refuse
    the spec itself."""
    detail = str(getattr(e, "explanation", None) or e)[:500]
    if isinstance(e, docker.errors.ImageNotFound):
        return BadSpecError(f"{what}: image not found ({detail}); build it with `hillclimb image build`")
    status = e.status_code if isinstance(e, docker.errors.APIError) else None
    if status == 429:
        return CapacityError(f"{what}: the Docker engine is at capacity: {detail}", delay_s=_retry_after(e))
    if status == 409:
        return RetryableProviderError(f"{what}: conflict in the Docker engine: {detail}", delay_s=_retry_after(e))
    if status is not None and 400 <= status < 500:
        return BadSpecError(f"{what}: the engine refused the spec: {detail}")
    if isinstance(e, (docker.errors.APIError, requests.exceptions.ConnectionError, docker.errors.DockerException)):
        return RetryableProviderError(f"{what}: Docker engine error: {detail}", delay_s=1.0)
    return FatalProviderError(f"{what}: {type(e).__name__}: {detail}")


def _retry_after(e: docker.errors.APIError, default_s: float = 1.0) -> float:
    """The response's Retry-After in seconds (the delta form), else `default_s`."""
    raw = e.response.headers.get("Retry-After") if e.response is not None else None
    try:
        return max(0.0, float(raw)) if raw is not None else default_s
    except ValueError:  # an HTTP date: rare from an engine, and the backoff covers it
        return default_s


def _package_of(env: str) -> str:
    """The top-level package a sandbox imports to serve `env` (the image must hold its code): named
    by the target itself, or by its entry point; nothing is imported (an OpenEnv app module's import
    may be slow, or need what only the image has)."""
    from envs.authoring.registry import BUILTIN_ENVS, installed_envs

    if env in BUILTIN_ENVS:
        return "envs"
    installed = installed_envs()
    path = installed[env].value if env in installed else env
    return path.partition(":")[0].partition(".")[0]


class DockerProvider:
    """Sandboxes as hardened Docker containers with no network."""

    name = "docker"
    options_model = DockerOptions
    run_liveness = None

    def __init__(
        self,
        *,
        image: str = DEFAULT_IMAGE,
        root: str | Path | None = None,
        client: Any = None,
        runtime: str | None = None,
        check_image: bool = True,
    ) -> None:
        """`check_image`: refuse an image labelled as built from environment code other than
        this process's (see `envs.digest`); images without the label are not checked."""
        self.image = image
        self.check_image = check_image
        self._images_checked: set[tuple[str, str]] = set()
        self.root = Path(root) if root else default_root()
        self.runtime = runtime
        try:
            self._client = client or docker.from_env(timeout=60)
        except docker.errors.DockerException as e:
            raise FatalProviderError(
                f"no Docker engine reachable ({e}); start dockerd or use the local provider"
            ) from e
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o711)
        self.root_digest = hashlib.sha256(str(self.root.resolve()).encode()).hexdigest()[:16]
        # As root the server runs under a dedicated uid; a user's under that user's own, so that
        # the socket directory it owns stays writable for the server inside.
        self.container_uid = CONTAINER_UID if os.geteuid() == 0 else os.getuid()
        self.container_gid = CONTAINER_UID if os.geteuid() == 0 else os.getgid()
        self.agent_uid = AGENT_UID if self.container_uid != AGENT_UID else AGENT_UID + 1
        self.verifier_uid = VERIFIER_UID if self.container_uid != VERIFIER_UID else VERIFIER_UID + 1
        self._tokens: dict[str, SecretStr] = {}
        self._inflight = InflightCalls()
        self._key_locks = KeyLocks()

    # -- create -------------------------------------------------------------------------

    async def create(self, spec: SandboxSpec) -> Sandbox:
        if spec.egress.mode != "deny_all":
            raise UnsupportedPolicy(
                "the docker provider runs sandboxes without any network; it cannot enforce an egress allow-list"
            )
        return await create_in_thread(spec, self._create, self.destroy)

    def _create(self, spec: SandboxSpec) -> Sandbox:
        with self._inflight.track(), self._key_locks.hold(spec):
            return self._create_container(spec)

    def _create_container(self, spec: SandboxSpec) -> Sandbox:
        sandbox_id = "dk-" + (spec.key_digest[:12] if spec.idempotency_key else secrets.token_hex(6))
        if sandbox_id in self._tokens:
            return self._existing(sandbox_id)
        self._check_image(spec.image or self.image, spec.env)
        created_at = time.time()
        token = secrets.token_urlsafe(32)
        labels = {**spec.all_labels(created_at), LABEL_ROOT: self.root_digest}
        home = self._make_home(sandbox_id, token, labels)
        try:
            container = self._client.containers.create(**self._container_args(spec, sandbox_id, home, labels))
        except docker.errors.APIError as e:
            if e.status_code == 409 and spec.idempotency_key:  # another process made this key's sandbox
                raise FatalProviderError(
                    f"sandbox {sandbox_id} for this idempotency key exists in another process"
                ) from e
            self._remove_home(home)
            raise _translate(e, f"creating sandbox {sandbox_id}") from e
        except docker.errors.DockerException as e:
            self._remove_home(home)
            raise _translate(e, f"creating sandbox {sandbox_id}") from e
        self._tokens[sandbox_id] = SecretStr(token)
        try:
            container.start()
        except docker.errors.DockerException as e:
            self._remove(sandbox_id)
            raise _translate(e, f"starting sandbox {sandbox_id}") from e
        return self._sandbox(sandbox_id, container.labels)

    def _check_image(self, image: str, env: str) -> None:
        if not self.check_image or (image, env) in self._images_checked:
            return
        try:
            labels = self._client.images.get(image).labels or {}
        except docker.errors.DockerException as e:
            raise _translate(e, f"image {image}") from e
        built_from, ours = labels.get(IMAGE_LABEL), envs_digest()
        if built_from is not None and built_from != ours:
            raise BadSpecError(
                f"image {image} was built from other environment code (envs digest {built_from}, this"
                f" checkout {ours}): its task suites and server may not match this run. Rebuild it with"
                " `hillclimb image build`, or set the provider option check_image: false to use it anyway"
            )
        package = _package_of(env)
        if package != "envs":  # a user's environment package: the image must hold this code of it
            held, here = labels.get(package_label(package)), package_digest(package)
            rebuild = f"`hillclimb image build --env <the project directory of {package}>`"
            if held is None:
                raise BadSpecError(f"image {image} does not hold {package}, environment {env!r}'s package: {rebuild}")
            if held != here:
                raise BadSpecError(
                    f"image {image} holds other code of {package} (digest {held}, this machine's {here}): {rebuild}"
                )
        self._images_checked.add((image, env))

    def _existing(self, sandbox_id: str) -> Sandbox:
        container = self._client.containers.get(NAME_PREFIX + sandbox_id)
        return self._sandbox(sandbox_id, container.labels)

    def _make_home(self, sandbox_id: str, token: str, labels: dict[str, str]) -> Path:
        home = self.root / sandbox_id
        home.mkdir(mode=0o711)
        fd = os.open(home / "meta.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"labels": labels}, f)
        sock_dir = home / "sock"
        sock_dir.mkdir(mode=0o700)
        if os.geteuid() == 0:  # bound in total, off the host's disk (without root it stays a plain dir)
            mount_tmpfs(str(sock_dir), size_kb=SOCK_DIR_KB, uid=self.container_uid, gid=self.container_gid)
        token_file = sock_dir / "token"
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        with os.fdopen(fd, "w") as f:
            f.write(token)
        for path in (sock_dir, token_file):
            os.chown(path, self.container_uid, self.container_gid)
        return home

    def _container_args(self, spec: SandboxSpec, sandbox_id: str, home: Path, labels: dict[str, str]) -> dict[str, Any]:
        res = spec.resources
        socket = f"{SOCKET_DIR}/env.sock"
        token_file = f"{SOCKET_DIR}/token"
        command = (
            list(spec.command)
            if spec.command
            else [
                spec.env,
                "--uds",
                socket,
                "--token-file",
                token_file,
                "--max-sessions",
                str(spec.max_sessions),
                "--ttl",
                str(spec.ttl_s),
                "--harden",
                "--server-user",
                f"{self.container_uid}:{self.container_gid}:{SERVER_GID}",
                "--agent-user",
                f"{self.agent_uid}:{self.agent_uid}",
                "--verifier-user",
                f"{self.verifier_uid}:{self.verifier_uid}",
            ]
        )
        agent, verifier = self.agent_uid, self.verifier_uid
        args: dict[str, Any] = {
            "image": spec.image or self.image,
            "command": command,
            "name": NAME_PREFIX + sandbox_id,
            "labels": labels,
            "environment": {
                **spec.env_vars,
                "HILLCLIMB_WORKDIR": "/work",
                "HILLCLIMB_ENV_SOCKET": socket,
                "HILLCLIMB_TOKEN_FILE": token_file,
            },
            "user": "0:0",  # the warden; the server and the agent's commands each get their own uid
            "working_dir": SOCKET_DIR,  # the server's own: not the agent's /work (see docker/Dockerfile)
            "network_mode": "none",
            "read_only": True,
            "tmpfs": {
                "/work": f"rw,exec,nosuid,nodev,size={res.disk_mb}m,uid={agent},gid={agent},mode=0700",
                "/verify": f"rw,exec,nosuid,nodev,size={res.disk_mb}m,uid={verifier},gid={verifier},mode=0700",
                "/tmp": "rw,nosuid,nodev,size=64m,mode=1777",
            },
            "volumes": {str(home / "sock"): {"bind": SOCKET_DIR, "mode": "rw"}},
            "cap_drop": ["ALL"],
            "cap_add": WARDEN_CAPABILITIES,
            "security_opt": ["no-new-privileges:true"],
            "ipc_mode": "private",
            "init": True,
            "mem_limit": f"{res.memory_mb}m",
            "memswap_limit": f"{res.memory_mb}m",
            "nano_cpus": int(res.cpu * 1e9),
            "pids_limit": res.pids,
            "ulimits": [docker.types.Ulimit(name="nofile", soft=4096, hard=4096)],
            "detach": True,
        }
        if self.runtime:
            args["runtime"] = self.runtime
        return args

    def _sandbox(self, sandbox_id: str, labels: dict[str, str]) -> Sandbox:
        created = labels.get(LABEL_CREATED)
        return Sandbox(
            id=sandbox_id,
            endpoint=f"unix://{self.root / sandbox_id / 'sock' / 'env.sock'}",
            token=self._tokens.get(sandbox_id),
            provider=self.name,
            created_at=utc_from_timestamp(float(created) if created else 0.0),
            labels=dict(labels),
        )

    # -- readiness ----------------------------------------------------------------------

    async def wait_ready(self, sandbox: Sandbox, timeout_s: float = READY_TIMEOUT_S) -> None:
        async def died() -> str | None:
            state = await asyncio.to_thread(self.inspect_state, sandbox.id)
            return f"exited ({state})" if state.get("status") in ("exited", "dead", "missing") else None

        await wait_healthy(
            sandbox, timeout_s, died=died, destroy=self.destroy, log_tail=self.log_tail, death_check_s=0.25
        )

    def inspect_state(self, sandbox_id: str) -> dict[str, Any]:
        """Status, exit code and whether the kernel's OOM killer struck."""
        try:
            container = self._client.containers.get(NAME_PREFIX + sandbox_id)
        except docker.errors.NotFound:
            return {"status": "missing"}
        state = container.attrs["State"]
        return {"status": state["Status"], "exit_code": state["ExitCode"], "oom_killed": state["OOMKilled"]}

    async def log_tail(self, sandbox_id: str) -> str:
        return await asyncio.to_thread(self._logs_tail, sandbox_id)

    def _logs_tail(self, sandbox_id: str, lines: int = 40) -> str:
        try:
            return self._client.containers.get(NAME_PREFIX + sandbox_id).logs(tail=lines).decode(errors="replace")
        except docker.errors.DockerException:
            return ""

    # -- destroy / list -------------------------------------------------------------------

    async def destroy(self, sandbox_id: str) -> None:
        await asyncio.to_thread(self._remove, sandbox_id)

    def _remove(self, sandbox_id: str) -> None:
        try:
            self._client.containers.get(NAME_PREFIX + sandbox_id).remove(force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:
            if e.status_code != 409:  # 409: another destroy is removing it already
                raise _translate(e, f"removing sandbox {sandbox_id}") from e
        except docker.errors.DockerException as e:
            raise _translate(e, f"removing sandbox {sandbox_id}") from e
        self._remove_home(self.root / sandbox_id)
        self._tokens.pop(sandbox_id, None)

    def _remove_home(self, home: Path) -> None:
        unmount(str(home / "sock"))
        shutil.rmtree(home, ignore_errors=True)

    async def list(self, selector: dict[str, str] | None = None) -> list[Sandbox]:
        return await asyncio.to_thread(self._list, selector or {})

    def _list(self, selector: dict[str, str]) -> list[Sandbox]:
        own = [LABEL_RUN, f"{LABEL_ROOT}={self.root_digest}"]
        filters = {"label": own + [f"{k}={v}" for k, v in selector.items()]}
        try:
            # Sparse: names and labels from the one list call, not an inspect per container, which
            # fails on a container removed in between (a sandbox destroyed while a reaper lists).
            containers = self._client.containers.list(all=True, filters=filters, sparse=True)
        except docker.errors.DockerException as e:
            raise _translate(e, "listing sandboxes") from e
        found: dict[str, Sandbox] = {}
        for container in containers:
            name = container.attrs["Names"][0].lstrip("/")
            if name.startswith(NAME_PREFIX):
                sandbox_id = name.removeprefix(NAME_PREFIX)
                found[sandbox_id] = self._sandbox(sandbox_id, container.attrs.get("Labels") or {})
        # A directory without its container (removed by hand, or its driver killed mid-create):
        # still a sandbox to list, so that a reaper can remove what is left of it.
        for home in self.root.glob("dk-*"):
            if home.name not in found and not self._container_exists(home.name):
                labels = self._home_labels(home)
                if all(labels.get(k) == v for k, v in selector.items()):
                    found[home.name] = self._sandbox(home.name, labels)
        return [found[sandbox_id] for sandbox_id in sorted(found)]

    def _container_exists(self, sandbox_id: str) -> bool:
        try:
            self._client.containers.get(NAME_PREFIX + sandbox_id)
            return True
        except docker.errors.NotFound:
            return False

    def _home_labels(self, home: Path) -> dict[str, str]:
        try:
            fd = os.open(home / "meta.json", os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd) as f:
                return dict(json.load(f).get("labels", {}))
        except (OSError, ValueError):  # no labels to judge it by: it expires an hour after it was made
            made = int(home.stat().st_mtime) if home.exists() else 0
            return {LABEL_CREATED: str(made), LABEL_EXPIRES: str(made + ORPHAN_DIR_TTL_S)}

    async def close(self) -> None:
        await asyncio.to_thread(self._inflight.wait_idle, 120.0)
        for sandbox_id in list(self._tokens):
            await self.destroy(sandbox_id)
        await asyncio.to_thread(self._client.close)
