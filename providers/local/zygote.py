"""The fork server behind local sandboxes.

A zygote is a single-threaded Python process that has already imported the env runtime.
Starting a sandbox is a fork (about a millisecond) instead of a fresh interpreter
(about 150 ms), which is what keeps local create-to-ready in the tens of milliseconds.

    provider ──JSON lines on stdin──► zygote ──fork──► supervisor (host PID namespace)
                                                           └─fork─► warden, PID 1 of new namespaces
                                                                      ├─fork─► env server (server uid)
                                                                      └─fork─► agent commands (agent uid)

PID 1 builds the sandbox's own root filesystem (`isolation.enter_minimal_root`), installs
the system call filter, keeps only the capabilities to change uid and kill, and becomes
the warden (`envs.sandbox.warden`) of the server it starts.

Each process dies with its parent (PDEATHSIG), and the zygote kills every sandbox when
its stdin closes, i.e. when the provider's process exits for any reason, SIGKILL
included. Killing a supervisor ends the sandbox: its init dies, and with PID 1 gone the
kernel kills everything left in the namespace.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import selectors
import signal
import sys
import time
import traceback
from typing import Any

from pydantic import BaseModel, ConfigDict

from envs.sandbox import seccomp, warden
from envs.sandbox.agent_processes import exited_children
from providers.local import isolation

# What the sandboxes' servers import, loaded once here: the built-in environments, and what a user's
# environment package builds on (envs.authoring.packages, envs.authoring.file_suite). It also makes them importable in a
# sandbox whose path no longer reaches an editable install's source tree.
PRELOAD = (
    "uvloop", "envs.server.env_server", "envs.server.serve",
    "envs.builtin.toy_terminal", "envs.builtin.inventory", "envs.builtin.probe", "envs.builtin.terminal",
    "envs.authoring.packages", "envs.authoring.file_suite",
)  # fmt: skip


class LaunchPlan(BaseModel):
    """Everything the zygote needs to start one sandbox."""

    model_config = ConfigDict(extra="forbid")

    id: str
    env: str
    command: list[str] | None
    token: str
    socket_path: str
    workdir: str  # the work dir when unisolated; isolated sandboxes get `isolation.SANDBOX_WORKDIR`
    tmpdir: str  # TMPDIR when unisolated; isolated sandboxes get a tmpfs /tmp instead
    root_dir: str  # an empty directory an isolated sandbox's own root is mounted on
    tmp_size_mb: int
    log_path: str
    uid: int | None  # the server's; None: a user namespace maps the caller to root inside instead
    gid: int | None
    agent_uid: int | None  # the agent's commands' uid (and gid); None: the server's
    verifier_uid: int | None  # the verifier's uid (and gid), with the agent's; None: the server's
    verifier_shell: str | None  # the host's execute-only bash for the verifier (see envs.sandbox.verification)
    isolate: bool
    rlimits: dict[str, int]
    cgroups: list[str]
    env_vars: dict[str, str]
    max_sessions: int
    expires_at: float


def _sandbox_environ(plan: LaunchPlan) -> dict[str, str]:
    run_dir = isolation.SANDBOX_RUN_DIR if plan.isolate else os.path.dirname(plan.socket_path)
    environ = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": run_dir,
        "TMPDIR": "/tmp" if plan.isolate else plan.tmpdir,
        "LANG": "C.UTF-8",
        "HILLCLIMB_WORKDIR": isolation.SANDBOX_WORKDIR if plan.isolate else plan.workdir,
        **({"HILLCLIMB_VERIFY_DIR": isolation.SANDBOX_VERIFY_DIR} if plan.isolate else {}),
        **(
            {"HILLCLIMB_VERIFIER_SHELL": isolation.SANDBOX_VERIFIER_SHELL}
            if plan.isolate and plan.verifier_shell
            else {}
        ),
        "HILLCLIMB_ENV_SOCKET": os.path.join(run_dir, os.path.basename(plan.socket_path)),
        "MALLOC_ARENA_MAX": "2",  # keeps virtual size, which RLIMIT_AS counts, close to real use
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    if plan.isolate:
        environ["HILLCLIMB_VERIFY_DIR"] = isolation.SANDBOX_VERIFY_DIR
    if plan.isolate and plan.verifier_shell:
        environ["HILLCLIMB_VERIFIER_SHELL"] = isolation.SANDBOX_VERIFIER_SHELL
    environ.update(plan.env_vars)
    return environ


def _join_cgroups(plan: LaunchPlan) -> None:
    for group in plan.cgroups:
        with open(os.path.join(group, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))


def _isolate_init(plan: LaunchPlan) -> None:
    """In the supervisor: new namespaces. The next fork becomes PID 1 in them."""
    if plan.uid is None:
        isolation.map_current_user()
    else:
        isolation.unshare(isolation.SANDBOX_NAMESPACES)


def _prepare_init(plan: LaunchPlan) -> None:
    """In PID 1, while still privileged: a root filesystem of the sandbox's own and a live loopback."""
    code = [sys.base_prefix, sys.prefix, *(p for p in sys.path if p)]  # what the server imports from
    agent = plan.agent_uid if plan.agent_uid is not None else 0  # 0: ourselves, inside a user namespace
    verifier = plan.verifier_uid if plan.verifier_uid is not None else 0
    isolation.enter_minimal_root(
        isolation.RootPlan(
            mount_point=plan.root_dir,
            code=code,
            code_owner=plan.uid if plan.agent_uid is not None else None,
            run_dir=os.path.dirname(plan.socket_path),
            work_kb=plan.tmp_size_mb * 1024,
            work_owner=agent,
            verify_owner=verifier,
            verifier_shell=plan.verifier_shell,
            tmp_mb=plan.tmp_size_mb,
            cgroups=plan.cgroups,
        )
    )
    isolation.loopback_up()


def _redirect_output(log_fd: int) -> None:
    """stdin from /dev/null, stdout and stderr to the sandbox's log (never the zygote's pipes)."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)


def _become_server(plan: LaunchPlan, report_fd: int) -> None:
    """In the server process (under its own uid already): serve, or exec the custom command."""
    environ = _sandbox_environ(plan)
    os.chdir(os.path.dirname(environ["HILLCLIMB_ENV_SOCKET"]))
    warden_fd = os.environ.get(warden.FD_ENV_VAR)
    keep = sorted({report_fd, *([int(warden_fd)] if warden_fd else [])})
    for low, high in zip([2, *keep], [*keep, 65536], strict=True):
        os.closerange(low + 1, high)
    for name in (warden.FD_ENV_VAR, warden.AGENT_UID_ENV_VAR, warden.VERIFIER_UID_ENV_VAR):
        if name in os.environ:
            environ[name] = os.environ[name]
    os.environ.clear()
    os.environ.update(environ)
    socket_path = environ["HILLCLIMB_ENV_SOCKET"]
    if plan.command:
        token_file = os.path.join(os.path.dirname(socket_path), "token")
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, plan.token.encode())
        os.close(fd)
        os.environ["HILLCLIMB_TOKEN_FILE"] = token_file
        if warden_fd:  # an environment server of its own may use the warden too
            os.set_inheritable(int(warden_fd), True)
        os.write(report_fd, b"ok")
        os.close(report_fd)
        os.execvpe(plan.command[0], plan.command, os.environ)
    from envs.server.env_server import ServerConfig
    from envs.server.serve import run_fast, serve

    os.write(report_fd, b"ok")
    os.close(report_fd)
    config = ServerConfig(max_sessions=plan.max_sessions)
    run_fast(serve(plan.env, token=plan.token, uds=socket_path, config=config))


def _wait_and_exit(pid: int) -> None:
    """Reap children until `pid` exits, then exit with its status (PID 1's duty, and the supervisor's)."""
    while True:
        try:
            done, status = os.wait()
        except ChildProcessError:
            os._exit(0)
        if done == pid:
            os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


def _run_sandbox(plan: LaunchPlan, report_fd: int) -> None:
    """Body of the forked supervisor; never returns."""
    os.setsid()
    isolation.die_with_parent()
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    _join_cgroups(plan)
    # Opened here, before any privilege is dropped, in a directory the sandbox cannot write:
    # the server only ever holds the descriptor, so it cannot swap the file the host reads.
    log_fd = os.open(plan.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    if plan.isolate:
        _isolate_init(plan)
    _descend()  # the child is PID 1 of the new namespaces (unisolated: the server itself)
    _redirect_output(log_fd)
    os.close(log_fd)
    isolation.no_new_privileges()
    isolation.apply_rlimits(plan.rlimits)  # before the fork: the server and the agent's commands inherit them
    if not plan.isolate:
        _become_server(plan, report_fd)
        os._exit(0)
    _prepare_init(plan)
    seccomp.install()
    isolation.keep_only_capabilities(isolation.WARDEN_CAPABILITIES)
    server_user = identities = None
    if plan.uid is not None and plan.gid is not None and plan.agent_uid is not None and plan.verifier_uid is not None:
        server_user = warden.Identity(plan.uid, plan.gid)
        identities = {
            "agent": warden.Identity(plan.agent_uid, plan.agent_uid),
            "verifier": warden.Identity(plan.verifier_uid, plan.verifier_uid),
        }
    warden.start_sandbox(lambda: _become_server(plan, report_fd), server_user=server_user, identities=identities)


def _descend() -> None:
    """Fork: the parent waits for the child and exits with its status; the child goes on,
    set to die with its parent."""
    child = os.fork()
    if child:
        os.closerange(3, 65536)
        _wait_and_exit(child)
    isolation.die_with_parent()


class Zygote:
    """The zygote's loop: spawn and kill on request, reap children, enforce expiry."""

    def __init__(self) -> None:
        self.children: dict[str, tuple[int, float]] = {}  # id → (supervisor pid, expires_at)
        self.exited: dict[str, int] = {}
        self._by_pid: dict[int, str] = {}

    def spawn(self, plan: LaunchPlan) -> dict[str, Any]:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child must never return into the zygote's loop
            try:
                os.close(read_fd)
                _run_sandbox(plan, write_fd)
            except BaseException as e:
                traceback.print_exc()  # to the sandbox's log, when it got that far
                with contextlib.suppress(OSError):  # the report pipe is closed once setup succeeded
                    os.write(write_fd, f"{type(e).__name__}: {e}".encode()[:4000])
            finally:
                os._exit(127)
        os.close(write_fd)
        report = _read_all(read_fd)
        self.children[plan.id] = (pid, plan.expires_at)
        self._by_pid[pid] = plan.id
        if report != b"ok":
            self.kill(plan.id)
            return {"ok": False, "error": report.decode(errors="replace") or "sandbox exited during setup"}
        return {"ok": True, "pid": pid}

    def kill(self, sandbox_id: str) -> dict[str, Any]:
        child = self.children.get(sandbox_id)
        if child is not None:
            with contextlib.suppress(ProcessLookupError):  # exited meanwhile; reap() records it
                os.kill(child[0], signal.SIGKILL)
        return {"ok": True}

    def status(self, sandbox_id: str) -> dict[str, Any]:
        if sandbox_id in self.exited:
            return {"ok": True, "state": "exited", "exit_code": self.exited[sandbox_id]}
        return {"ok": True, "state": "running" if sandbox_id in self.children else "unknown"}

    def reap(self) -> None:
        for pid, status in exited_children():
            sandbox_id = self._by_pid.pop(pid, None)
            if sandbox_id is not None:
                self.children.pop(sandbox_id, None)
                self.exited[sandbox_id] = os.waitstatus_to_exitcode(status)

    def kill_expired(self, now: float) -> None:
        for sandbox_id, (_, expires_at) in list(self.children.items()):
            if now >= expires_at:
                self.kill(sandbox_id)

    def kill_all(self) -> None:
        for sandbox_id in list(self.children):
            self.kill(sandbox_id)

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "spawn":
            return self.spawn(LaunchPlan.model_validate(request["plan"]))
        if op == "kill":
            return self.kill(request["id"])
        if op == "status":
            return self.status(request["id"])
        if op == "ping":
            return {"ok": True}
        return {"ok": False, "error": f"unknown op {op!r}"}


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


def _preload() -> None:
    for module in PRELOAD:
        try:
            importlib.import_module(module)
        except ImportError as e:  # the sandbox re-imports it and reports the failure itself
            print(f"zygote: could not preload {module}: {e}", file=sys.stderr)


def main() -> None:
    # `python -m` puts '' (the cwd) on sys.path; sandboxes chdir away, so pin it.
    sys.path[:] = [p or os.getcwd() for p in sys.path]
    _preload()
    zygote = Zygote()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    selector = selectors.DefaultSelector()
    selector.register(0, selectors.EVENT_READ, "requests")
    selector.register(wake_r, selectors.EVENT_READ, "signal")
    out = sys.stdout.buffer
    pending = b""
    while True:
        for key, _ in selector.select(timeout=1.0):
            if key.data == "signal":
                os.read(wake_r, 4096)
                continue
            data = os.read(0, 65536)
            if not data:  # the provider's process is gone: take every sandbox with it
                zygote.kill_all()
                return
            pending += data
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                try:
                    reply = zygote.handle(json.loads(line))
                except Exception as e:  # a bad request must not kill every sandbox
                    reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
                out.write(json.dumps(reply).encode() + b"\n")
                out.flush()
        zygote.reap()
        zygote.kill_expired(time.time())


if __name__ == "__main__":
    main()
