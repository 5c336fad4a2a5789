"""`LocalProvider`: each sandbox is a process tree in its own namespaces on this machine.

A sandbox gets new network, PID, mount, IPC and UTS namespaces (only a loopback
interface, no route out), a root filesystem of its own (the system's programs and
libraries read-only, a work dir, /tmp), two unprivileged uids of its own when we run as
root, one for its server and one for the agent's commands (a user namespace otherwise),
cgroup or rlimit limits, and a Unix socket as its only door. It is killed with its whole tree on destroy, at its
time-to-live, and when the process that created it dies.

On disk, under the provider's root (mode 0711, owned by us):

    <root>/<id>/meta.json     labels, pids and uid slot (no token), 0600
    <root>/<id>/server.log    the server's stdout and stderr, 0600: the server holds only a descriptor
    <root>/<id>/run/          env.sock, owned by the server's uid, 0700; as root, a 256 KiB tmpfs;
                              the sandbox sees it at /run/hillclimb
    <root>/<id>/root/         where an isolated sandbox's own root filesystem is mounted, inside
                              its mount namespace (see `isolation.enter_minimal_root`); its work
                              dir is /sandbox there, a tmpfs of its disk limit, owned by the agent
    <root>/<id>/work/, tmp/   its work dir and $TMPDIR when unisolated
    <root>/.slots/<n>         uid slot claims: a symlink naming the sandbox; its server runs as
                              uid_base + n, its agent's commands as uid_base + uid_slots + n, its
                              verifier as uid_base + 2 * uid_slots + n
    <root>/.verifier-bash     as root: bash, execute-only (0111), bound into every sandbox for
                              its verifier (see `envs.sandbox.verification`)

Another process (`hillclimb sandbox ls|rm|reap`) reads the same layout.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import math
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import SecretStr

from envs.sandbox.agent_processes import start_ticks
from hillclimb.config.providers import LocalOptions
from hillclimb.provider_errors import (
    BadSpecError,
    CapacityError,
    FatalProviderError,
    IsolationUnavailable,
    SandboxDiedError,
    UnsupportedPolicy,
)
from providers.contract import Sandbox, SandboxSpec
from providers.local import isolation
from providers.local.cgroups import Cgroups
from providers.local.zygote import LaunchPlan
from providers.readiness import READY_TIMEOUT_S, wait_healthy
from providers.toolkit import InflightCalls, KeyLocks, create_in_thread, utc_from_timestamp

log = logging.getLogger("hillclimb.providers.local")

Isolation = Literal["auto", "namespaces", "none"]

RUN_DIR_KB = 256
"""Size of the tmpfs behind a sandbox's socket directory: a socket and a token file fit."""


def default_root() -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return Path(runtime) / "hillclimb" / "sandboxes" if runtime else Path(f"/tmp/hillclimb-{os.getuid()}") / "sandboxes"


class _ZygoteClient:
    """The zygote process and a thread-safe request/reply channel to it."""

    def __init__(self, log_path: Path) -> None:
        self._lock = threading.Lock()
        self._log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            proc = self._ensure()
            assert proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.write(json.dumps(message).encode() + b"\n")
                proc.stdin.flush()
                line = proc.stdout.readline()
            except BrokenPipeError:
                line = b""
            if not line:
                self._proc = None
                raise FatalProviderError(f"the local sandbox zygote died; see {self._log_path}")
            return json.loads(line)

    def _ensure(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            with open(self._log_path, "ab") as err:
                self._proc = subprocess.Popen(
                    [sys.executable, "-m", "providers.local.zygote"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=err,
                    start_new_session=True,  # Ctrl-C reaches the driver, whose exit then closes our stdin
                )
        return self._proc

    def close(self) -> None:
        with self._lock:
            if self._proc is not None:
                assert self._proc.stdin is not None and self._proc.stdout is not None
                self._proc.stdin.close()  # the zygote kills its sandboxes and exits on EOF
                self._proc.wait(timeout=10)
                self._proc.stdout.close()
                self._proc = None


class LocalProvider:
    """Sandboxes as isolated local processes: the embedded default provider."""

    name = "local"
    options_model = LocalOptions
    run_liveness = None

    def __init__(
        self,
        *,
        root: str | Path | None = None,
        isolation: Isolation = "auto",
        uid_base: int = 200_000,
        uid_slots: int = 60_000,
    ) -> None:
        self.root = Path(root) if root else default_root()
        self.isolation = isolation
        self.uid_base = uid_base
        self.uid_slots = uid_slots
        self._as_root = os.geteuid() == 0
        self._cgroups = Cgroups.detect() if self._as_root else None
        self._isolate: bool | None = None  # decided on first create
        self._zygote = _ZygoteClient(self._prepare_root() / ".zygote.log")
        self._tokens: dict[str, SecretStr] = {}
        self._key_locks = KeyLocks()
        self._inflight = InflightCalls()
        self._lock = threading.Lock()

    def _prepare_root(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o711)
        (self.root / ".slots").mkdir(mode=0o700, exist_ok=True)
        return self.root

    def describe(self) -> dict[str, Any]:
        return {
            "isolation": "namespaces" if self._isolated() else "NONE",
            "user": "per-sandbox uid" if self._as_root else "user namespace",
            "limits": self._cgroups.describe() if self._cgroups else "rlimits only",
            "root": str(self.root),
        }

    def _isolated(self) -> bool:
        if self._isolate is None:
            if self.isolation == "none":
                log.warning(
                    "LOCAL SANDBOXES ARE NOT ISOLATED (isolation='none'): environments run as plain processes "
                    "with this user's rights and full network access. Only use this with environments you trust."
                )
                self._isolate = False
            else:
                reason = isolation.namespaces_usable(self._as_root)
                if reason is not None:
                    raise IsolationUnavailable(
                        f"cannot isolate local sandboxes on this machine: {reason}. Enable unprivileged user "
                        "namespaces (sysctl kernel.unprivileged_userns_clone=1), run as root, or opt in to "
                        "unisolated sandboxes with isolation='none' (CLI: --unisolated) for trusted environments only."
                    )
                self._isolate = True
        return self._isolate

    # -- create -------------------------------------------------------------------------

    async def create(self, spec: SandboxSpec) -> Sandbox:
        self._check_spec(spec)
        return await create_in_thread(spec, self._create, self.destroy)

    def _check_spec(self, spec: SandboxSpec) -> None:
        if spec.image is not None:
            raise BadSpecError(
                f"the local provider runs no container images (got image={spec.image!r}); use the docker provider"
            )
        if spec.egress.mode != "deny_all":
            raise UnsupportedPolicy(
                "local sandboxes have no network at all; an allow-list egress policy needs a provider "
                "that can enforce one"
            )

    def _create(self, spec: SandboxSpec) -> Sandbox:
        with self._inflight.track(), self._key_locks.hold(spec):
            return self._create_new(spec)

    def _create_new(self, spec: SandboxSpec) -> Sandbox:
        isolate = self._isolated()
        sandbox_id, home = self._claim_dir(spec)
        if home is None:
            return self._existing(sandbox_id)
        created_at = time.time()
        token = secrets.token_urlsafe(32)
        labels = spec.all_labels(created_at)
        try:
            slot = self._claim_slot(sandbox_id) if isolate and self._as_root else None
            uid = None if slot is None else self.uid_base + slot
            agent_uid = None if slot is None else self.uid_base + self.uid_slots + slot
            verifier_uid = None if slot is None else self.uid_base + 2 * self.uid_slots + slot
            dirs = self._make_dirs(home, uid)
            cgroups = self._cgroups.create(sandbox_id, spec.resources) if self._cgroups and isolate else []
            plan = LaunchPlan(
                id=sandbox_id,
                env=spec.env,
                command=list(spec.command) if spec.command else None,
                token=token,
                socket_path=str(dirs["run"] / "env.sock"),
                workdir=str(dirs["work"]),
                tmpdir=str(dirs["tmp"]),
                root_dir=str(dirs["root"]),
                tmp_size_mb=spec.resources.disk_mb,
                log_path=str(home / "server.log"),
                uid=uid,
                gid=uid,
                agent_uid=agent_uid,
                verifier_uid=verifier_uid,
                verifier_shell=str(self._verifier_shell()) if slot is not None else None,
                isolate=isolate,
                rlimits=self._rlimits(spec, unique_uid=uid is not None, cgroups=bool(cgroups)),
                cgroups=cgroups,
                env_vars=spec.env_vars,
                max_sessions=spec.max_sessions,
                expires_at=created_at + spec.ttl_s,
            )
            self._write_meta(
                home,
                {"labels": labels, "created_at": created_at, "slot": slot, "endpoint": f"unix://{plan.socket_path}"},
            )
            reply = self._zygote.request({"op": "spawn", "plan": plan.model_dump()})
            if not reply.get("ok"):
                raise SandboxDiedError(
                    f"sandbox {sandbox_id} failed to start: {reply.get('error')}", log_tail=self._log_tail(home)
                )
            self._update_meta(home, pid=reply["pid"], pid_start=start_ticks(reply["pid"]))
        except BaseException:
            self._remove(sandbox_id)
            raise
        with self._lock:
            self._tokens[sandbox_id] = SecretStr(token)
        return self._sandbox(sandbox_id, self._read_meta(home))

    def _claim_dir(self, spec: SandboxSpec) -> tuple[str, Path | None]:
        """A new sandbox directory (atomic, so one idempotency key yields one sandbox), or
        (id, None) when the key's sandbox already exists."""
        while True:
            sandbox_id = "lc-" + (spec.key_digest[:12] if spec.idempotency_key else secrets.token_hex(6))
            home = self.root / sandbox_id
            try:
                home.mkdir(mode=0o711)
                return sandbox_id, home
            except FileExistsError:
                if spec.idempotency_key:
                    return sandbox_id, None

    def _existing(self, sandbox_id: str) -> Sandbox:
        meta = self._read_meta(self.root / sandbox_id)
        if sandbox_id not in self._tokens:
            raise FatalProviderError(
                f"sandbox {sandbox_id} for this idempotency key exists but was created by another process; "
                "destroy it (hillclimb sandbox rm) or use that process's handle"
            )
        return self._sandbox(sandbox_id, meta)

    def _claim_slot(self, sandbox_id: str) -> int:
        slots = self.root / ".slots"
        start = secrets.randbelow(self.uid_slots)
        for offset in range(self.uid_slots):
            slot = (start + offset) % self.uid_slots
            try:  # atomic, and says whose it is: only that sandbox's destroy may free it
                os.symlink(sandbox_id, slots / str(slot))
                return slot
            except FileExistsError:
                continue
        raise CapacityError(
            f"all {self.uid_slots} sandbox uid slots are taken: destroyed sandboxes free them "
            "(`hillclimb sandbox reap` removes those whose driver died)"
        )

    def _verifier_shell(self) -> Path:
        """`<root>/.verifier-bash`, made once per provider root, again if this host's bash changed."""
        bash = Path(os.path.realpath(shutil.which("bash") or "/bin/bash"))
        shell = self.root / ".verifier-bash"
        with contextlib.suppress(FileNotFoundError):
            held = shell.stat()
            if held.st_size == bash.stat().st_size and held.st_mtime >= bash.stat().st_mtime and held.st_uid == 0:
                return shell
        made = self.root / f".verifier-bash.{os.getpid()}.{threading.get_ident()}"
        shutil.copyfile(bash, made)
        os.chmod(made, 0o111)
        os.replace(made, shell)
        return shell

    def _make_dirs(self, home: Path, uid: int | None) -> dict[str, Path]:
        dirs = {name: home / name for name in ("run", "work", "tmp", "root")}
        for path in dirs.values():
            path.mkdir(mode=0o700)
            if uid is not None:
                os.chown(path, uid, uid)
        if uid is not None:  # the socket dir stays on the host (we connect there), but bounded
            isolation.mount_tmpfs(str(dirs["run"]), size_kb=RUN_DIR_KB, uid=uid, gid=uid, flags=isolation.MS_NOEXEC)
        return dirs

    def _rlimits(self, spec: SandboxSpec, *, unique_uid: bool, cgroups: bool) -> dict[str, int]:
        res = spec.resources
        limits = {
            "cpu_s": math.ceil(spec.ttl_s * res.cpu) + 1,  # all the CPU time its lifetime could use
            "file_bytes": res.disk_mb * 1024 * 1024,
            "nofile": 4096,
        }
        # RLIMIT_NPROC counts every task of the real uid: exact when each sandbox has its
        # own uid, a budget on top of the user's current tasks when it shares ours.
        limits["nproc"] = res.pids if unique_uid else _task_count(os.getuid()) + res.pids
        if not cgroups:
            limits["address_space_bytes"] = res.memory_mb * 1024 * 1024
        return limits

    # -- metadata -----------------------------------------------------------------------

    def _write_meta(self, home: Path, meta: dict[str, Any]) -> None:
        path = home / "meta.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(meta, f)

    def _update_meta(self, home: Path, **fields: Any) -> None:
        self._write_meta(home, {**self._read_meta(home), **fields})

    def _read_meta(self, home: Path) -> dict[str, Any]:
        try:
            return json.loads((home / "meta.json").read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def _sandbox(self, sandbox_id: str, meta: dict[str, Any]) -> Sandbox:
        return Sandbox(
            id=sandbox_id,
            endpoint=meta.get("endpoint", f"unix://{self.root / sandbox_id / 'run' / 'env.sock'}"),
            token=self._tokens.get(sandbox_id),
            provider=self.name,
            created_at=utc_from_timestamp(meta.get("created_at", 0.0)),
            labels=meta.get("labels", {}),
        )

    async def log_tail(self, sandbox_id: str) -> str:
        return await asyncio.to_thread(self._log_tail, self.root / sandbox_id)

    def _log_tail(self, home: Path, limit: int = 2000) -> str:
        try:  # no link is followed: without a uid of its own, a sandbox can write its home
            fd = os.open(home / "server.log", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return ""
        with os.fdopen(fd, "rb") as log_file:
            info = os.fstat(fd)
            size = info.st_size if stat.S_ISREG(info.st_mode) else 0  # never wait on a planted FIFO
            log_file.seek(max(size - limit, 0))
            return log_file.read(min(size, limit)).decode(errors="replace")

    # -- readiness ----------------------------------------------------------------------

    async def wait_ready(self, sandbox: Sandbox, timeout_s: float = READY_TIMEOUT_S) -> None:
        async def died() -> str | None:
            return "exited" if await asyncio.to_thread(self._exited, sandbox.id) else None

        await wait_healthy(sandbox, timeout_s, died=died, destroy=self.destroy, log_tail=self.log_tail)

    def _exited(self, sandbox_id: str) -> bool:
        if sandbox_id not in self._tokens:
            return not self._alive(self._read_meta(self.root / sandbox_id))
        return self._zygote.request({"op": "status", "id": sandbox_id}).get("state") == "exited"

    # -- destroy / list -------------------------------------------------------------------

    async def destroy(self, sandbox_id: str) -> None:
        await asyncio.to_thread(self._remove, sandbox_id)

    def _remove(self, sandbox_id: str) -> None:
        home = self.root / sandbox_id
        try:
            home_fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except FileNotFoundError:
            home_fd = None
        try:
            # One destroyer at a time, in any process; the next finds the directory gone (or a
            # new sandbox under the same key, another inode) and does nothing.
            if home_fd is not None:
                fcntl.flock(home_fd, fcntl.LOCK_EX)
                if _same_inode(home_fd, home):
                    self._kill_and_free(sandbox_id, home)
        finally:
            if home_fd is not None:
                os.close(home_fd)
            with self._lock:
                self._tokens.pop(sandbox_id, None)

    def _kill_and_free(self, sandbox_id: str, home: Path) -> None:
        meta = self._read_meta(home)
        if sandbox_id in self._tokens:
            self._zygote.request({"op": "kill", "id": sandbox_id})
        elif self._alive(meta):
            os.kill(meta["pid"], signal.SIGKILL)
        if self._cgroups is not None:
            self._kill_group(sandbox_id)
        else:
            self._wait_gone(meta)
        isolation.unmount(str(home / "run"))
        if meta.get("slot") is not None:
            self._free_slot(meta["slot"], sandbox_id)
        shutil.rmtree(home, ignore_errors=True)  # last: while it exists, a destroyer can read the slot

    def _free_slot(self, slot: int, sandbox_id: str) -> None:
        claim = self.root / ".slots" / str(slot)
        with contextlib.suppress(OSError):  # already freed, or not a claim of this layout
            if os.readlink(claim) == sandbox_id:
                claim.unlink()

    def _kill_group(self, sandbox_id: str) -> None:
        assert self._cgroups is not None
        deadline = time.monotonic() + 5.0
        while True:
            self._cgroups.kill_all(sandbox_id)
            if self._cgroups.remove(sandbox_id) or time.monotonic() > deadline:
                return
            time.sleep(0.005)

    def _wait_gone(self, meta: dict[str, Any], timeout_s: float = 2.0) -> None:
        """Without cgroups, wait for the supervisor to be gone before its uid slot is reused."""
        deadline = time.monotonic() + timeout_s
        while self._alive(meta) and time.monotonic() < deadline:
            time.sleep(0.002)

    def memory_report(self, sandbox_id: str) -> dict[str, int]:
        """Peak memory and OOM kills of a live sandbox, when cgroups are in use."""
        return self._cgroups.memory_events(sandbox_id) if self._cgroups else {}

    async def list(self, selector: dict[str, str] | None = None) -> list[Sandbox]:
        return await asyncio.to_thread(self._list, selector or {})

    def _list(self, selector: dict[str, str]) -> list[Sandbox]:
        found = []
        for home in sorted(self.root.glob("lc-*")):
            meta = self._read_meta(home)
            labels = meta.get("labels", {})
            if all(labels.get(k) == v for k, v in selector.items()):
                found.append(self._sandbox(home.name, meta))
        return found

    def _alive(self, meta: dict[str, Any]) -> bool:
        pid = meta.get("pid")
        return pid is not None and start_ticks(pid) == meta.get("pid_start")

    async def close(self) -> None:
        await asyncio.to_thread(self._inflight.wait_idle, 60.0)
        for sandbox_id in list(self._tokens):
            await self.destroy(sandbox_id)
        await asyncio.to_thread(self._zygote.close)


def _same_inode(fd: int, path: Path) -> bool:
    try:
        return os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _task_count(uid: int) -> int:
    """Processes and threads owned by `uid` (what RLIMIT_NPROC counts)."""
    count = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        except OSError:
            continue
        if int(fields["Uid"].split()[1]) == uid:
            count += int(fields["Threads"])
    return count
