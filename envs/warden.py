"""The warden: the one process of a sandbox that may change uid, and the parent of every agent command.

    warden (PID 1 of the sandbox; root, CAP_SETUID/SETGID/KILL only)
      ├─fork─► env server            (server uid, no capabilities)   ◄─┐ socketpair:
      └─fork─► the agent's commands  (agent uid, own session each)  ──┘ run / cancel / replies

The env server decides what runs; the warden only runs it, under the agent's uid, and
cleans up after it. With two uids the agent's commands can neither read what only the
server may read (its code, its task suites: the answers) nor ptrace or read the server,
where the reward is computed; and the server itself never holds a capability. Without a
second uid (an ordinary user's sandbox, or a server outside any sandbox) the warden is an
unprivileged helper process and the commands share the server's uid.

Every command runs in a session of its own. When it exits, times out or is cancelled its
whole process group is killed, and so is anything it left that escaped the group
(`setsid`, daemons): orphans come back to the warden, which is PID 1 or a child subreaper,
and those started since the command began are killed (`agent_processes.kill_adopted`).

Protocol: one JSON object per SOCK_SEQPACKET message. The server sends
`{"op": "run", "id", "argv", "cwd", "env", "timeout_s", "wait"}` with the command's output
descriptor (and optionally its stdin) attached, or `{"op": "cancel", "id"}`. The warden
answers a waited-for run with `{"id", "exit_code", "timed_out"}` (exit_code: the shell's
convention, 128 + N when killed by signal N), or `{"id", "error"}` for a request it refuses.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import selectors
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from envs import agent_processes

FD_ENV_VAR = "HILLCLIMB_WARDEN_FD"
"""Set in the server's environment: the descriptor of its end of the warden's socket."""
SOCKET_ENV_VAR = "HILLCLIMB_WARDEN_SOCKET"
"""Set in the server's environment instead, where the warden runs apart (a container of its
own, under the agent's uid): the path the warden listens on."""
AGENT_UID_ENV_VAR = "HILLCLIMB_AGENT_UID"
"""Set in the server's environment: the uid the agent's commands run under."""

MAX_MESSAGE = 1 << 20
_MAX_FDS = 2


class BadRequest(ValueError):
    """A request the warden refuses (it answers with the reason; the server sent nonsense)."""


@dataclass(frozen=True, slots=True)
class Identity:
    """A uid, its primary gid and supplementary groups."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Identity:
        """`UID:GID[:GROUP,GROUP...]`, as on the command line."""
        parts = text.split(":")
        if len(parts) not in (2, 3) or not all(p.isdigit() for p in parts[:2]):
            raise ValueError(f"expected UID:GID[:GROUP,...], got {text!r}")
        groups = tuple(int(g) for g in parts[2].split(",") if g) if len(parts) == 3 else ()
        return cls(int(parts[0]), int(parts[1]), groups)

    def assume(self) -> None:
        """Become this identity for good (real, effective and saved ids)."""
        os.setgroups(list(self.groups))
        os.setresgid(self.gid, self.gid, self.gid)
        os.setresuid(self.uid, self.uid, self.uid)


@dataclass(slots=True)
class _Command:
    id: int
    started: int
    deadline: float | None
    wait: bool
    timed_out: bool = False


class Warden:
    """Runs the server's requests until its socket closes (or, in a sandbox, the server exits)."""

    def __init__(self, sock: socket.socket, agent: Identity | None, server_pid: int | None = None) -> None:
        self.sock = sock
        self.agent = agent
        self.server_pid = server_pid
        self.server_status: int | None = None
        self.commands: dict[int, _Command] = {}  # by pid

    def serve(self) -> int:
        """Serve until the server is gone; kill every command left; the server's exit status."""
        agent_processes.adopt_orphans()
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        selector = selectors.DefaultSelector()
        selector.register(self.sock, selectors.EVENT_READ, "request")
        selector.register(wake_r, selectors.EVENT_READ, "signal")
        try:
            while self.server_status is None:
                for key, _ in selector.select(self._next_timeout()):
                    if key.data == "signal":
                        os.read(wake_r, 4096)
                    elif not self._receive():  # the server's end closed: it is gone, or going
                        if self.server_pid is None:
                            return 0
                        selector.unregister(self.sock)
                        for pid in self.commands:
                            _kill_group(pid)
                self._reap()
                self._expire(time.monotonic())
            return self.server_status
        finally:
            for pid in list(self.commands):
                _kill_group(pid)
            self._reap()

    # -- requests -------------------------------------------------------------------------

    def _receive(self) -> bool:
        try:
            data, ancdata, _, _ = self.sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(_MAX_FDS * 4))
        except ConnectionResetError:
            return False
        if not data:
            return False
        fds = _received_fds(ancdata)
        request: Any = None
        try:
            request = json.loads(data)
            if not isinstance(request, dict):
                raise BadRequest("a request must be a JSON object")
            self._handle(request, fds)
        except (BadRequest, ValueError, TypeError, KeyError) as e:
            self._reply({"id": request.get("id") if isinstance(request, dict) else None, "error": str(e)})
        finally:
            for fd in fds:
                os.close(fd)
        return True

    def _handle(self, request: dict[str, Any], fds: list[int]) -> None:
        op = request.get("op")
        if op == "cancel":
            for pid, command in self.commands.items():
                if command.id == request["id"]:
                    _kill_group(pid)
            return
        if op != "run":
            raise BadRequest(f"unknown op {op!r}")
        argv, cwd, env = request["argv"], request["cwd"], request["env"]
        if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
            raise BadRequest("argv must be a non-empty list of strings")
        if not isinstance(cwd, str) or not isinstance(env, dict):
            raise BadRequest("cwd must be a string and env an object")
        if not fds:
            raise BadRequest("a run request carries its output descriptor")
        timeout = request.get("timeout_s")
        pid = os.fork()
        if pid == 0:
            _exec_command(argv, cwd, {str(k): str(v) for k, v in env.items()}, fds, self.agent)
        started = agent_processes.start_ticks(pid) or 0
        deadline = time.monotonic() + float(timeout) if timeout is not None else None
        self.commands[pid] = _Command(int(request["id"]), started, deadline, bool(request.get("wait", True)))

    def _reply(self, message: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):  # the server is gone: nobody to tell
            self.sock.send(json.dumps(message).encode())

    # -- children -------------------------------------------------------------------------

    def _reap(self) -> None:
        for pid, status in agent_processes.exited_children():
            if pid == self.server_pid:
                self.server_status = os.waitstatus_to_exitcode(status) & 0xFF
                continue
            command = self.commands.pop(pid, None)
            if command is None:
                continue  # an orphan that exited by itself
            _kill_group(pid)
            keep = set(self.commands) | ({self.server_pid} if self.server_pid else set())
            agent_processes.kill_adopted(command.started, keep=keep)
            if command.wait:
                code = os.waitstatus_to_exitcode(status)
                exit_code = 128 - code if code < 0 else code
                self._reply({"id": command.id, "exit_code": exit_code, "timed_out": command.timed_out})

    def _expire(self, now: float) -> None:
        for pid, command in self.commands.items():
            if command.deadline is not None and now >= command.deadline and not command.timed_out:
                command.timed_out = True
                _kill_group(pid)

    def _next_timeout(self) -> float | None:
        deadlines = [c.deadline for c in self.commands.values() if c.deadline is not None and not c.timed_out]
        return max(0.0, min(deadlines) - time.monotonic()) if deadlines else None


def _received_fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.extend(array.array("i", payload[: len(payload) - len(payload) % 4]))
    return fds


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _exec_command(argv: list[str], cwd: str, env: dict[str, str], fds: list[int], agent: Identity | None) -> NoReturn:
    """In the forked child: a session of its own, the agent's uid, then exec. Never returns."""
    code = 127
    try:
        os.setsid()
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        stdin = fds[1] if len(fds) > 1 else os.open(os.devnull, os.O_RDONLY)
        os.dup2(stdin, 0)
        os.dup2(fds[0], 1)
        os.dup2(fds[0], 2)
        os.closerange(3, 1 << 16)
        if agent is not None:
            agent.assume()
        code = 126
        os.chdir(cwd)  # as the agent: its own rights decide whether it may work there
        code = 127
        os.execvpe(argv[0], argv, env)
    except OSError as e:
        with contextlib.suppress(OSError):
            where = f"cannot start in {cwd}" if code == 126 else "cannot run"
            os.write(2, f"{argv[0]}: {where}: {e.strerror}\n".encode())
    finally:
        os._exit(code)


def start_sandbox(server: Callable[[], None], *, server_user: Identity | None, agent: Identity | None) -> NoReturn:
    """In a sandbox's first process: fork the server (under `server_user`, told where the
    warden is), then be its warden until it exits, and exit with its status."""
    server_end, warden_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        warden_end.close()
        if server_user is not None:
            server_user.assume()
        os.environ[FD_ENV_VAR] = str(server_end.detach())
        os.environ[AGENT_UID_ENV_VAR] = str(agent.uid if agent is not None else os.getuid())
        server()  # an exception propagates to the caller's handler, in this child
        os._exit(0)
    server_end.close()
    fd = warden_end.fileno()
    os.closerange(3, fd)  # the warden holds nothing of its parent's: only stdio and its socket
    os.closerange(fd + 1, 1 << 16)
    status = Warden(warden_end, agent, server_pid=pid).serve()
    os._exit(status)


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a connected Unix socket, as the kernel saw it connect."""
    _, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    return uid


def accept_server(path: str, server_uid: int) -> socket.socket:
    """Listen at `path` for the server and return its connection: the first one whose peer
    runs as `server_uid` (checked by the kernel's SO_PEERCRED, not by the socket's mode, which
    lets any uid connect). Others are closed unanswered. The path is removed once the server is
    in, so nothing else can connect, and whatever later appears there is never used."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    listener.bind(path)
    os.chmod(path, 0o777)  # the server's uid is not ours; the peer check decides who gets in
    listener.listen(4)
    with listener:
        while True:
            conn, _ = listener.accept()
            if peer_uid(conn) == server_uid:
                os.unlink(path)
                return conn
            conn.close()


def main() -> None:
    """`python -m envs.warden FD`: the warden of a server outside any sandbox (same uid).

    `python -m envs.warden --listen PATH --server-uid UID`: a warden apart from its server (a pod's
    second container, started as the agent's uid, with no capability): it waits at PATH for the
    server, runs the agent's commands under its own uid, and exits when the server's end closes."""
    if sys.argv[1:2] != ["--listen"]:
        sys.exit(Warden(socket.socket(fileno=int(sys.argv[1])), agent=None).serve())
    if len(sys.argv) != 5 or sys.argv[3] != "--server-uid" or not sys.argv[4].isdigit():
        sys.exit("usage: python -m envs.warden --listen PATH --server-uid UID")
    agent_processes.keep_memory_private()  # the agent's commands share our uid: they must not read or trace us
    sock = accept_server(sys.argv[2], int(sys.argv[4]))
    sys.exit(Warden(sock, agent=None).serve())


if __name__ == "__main__":
    main()
