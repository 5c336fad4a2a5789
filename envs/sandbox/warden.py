"""The warden: the one process of a sandbox that may change uid, and the parent of every command.

    warden (PID 1 of the sandbox; root, CAP_SETUID/SETGID/KILL only)
      ├─fork─► env server                (server uid, no capabilities)   ◄─┐ socketpair:
      ├─fork─► the agent's commands      (agent uid, own session each)  ──┤ run / cancel / end
      └─fork─► what decides the reward   (verifier uid)                 ──┘ and replies

The env server decides what runs; the warden only runs it, under the uid of the role the
server names (`as`: "agent" or "verifier"), and cleans up after it. With uids of their own
the agent's commands can neither read what only the server may read (its code, its task
suites: the answers) nor trace or signal the server, where the reward is computed, nor a
verifier. The server itself never holds a capability. Without uids to give (an ordinary
user's sandbox, or a server outside any sandbox) the warden is an unprivileged helper and
every role shares the server's uid; a warden apart (a pod's agent or verifier container,
`--listen`) runs its role under its own uid.

Nothing a command starts outlives it: when it exits, times out or is cancelled its process
group is killed, and, once no other command of its role runs, every process of the role's
uid (`agent_processes.kill_uid`: a `setsid`, a double fork or a chain of them included), before
the reply goes out. While a command started without waiting (a cleanup) runs, the role's next
commands wait for it, so that a role's leftovers are always ended before its next command
starts. `end` kills every process of a role at once, its running commands included, and
answers when they are gone: what a verification does before it starts (`envs.sandbox.verification`).

Protocol: one JSON object per SOCK_SEQPACKET message. The server sends
`{"op": "run", "id", "as", "argv", "cwd", "env", "timeout_s", "wait", "streams"}` with the
command's descriptors attached, in the order `streams` names them ("stdout", then any of
"stdin" and "stderr": stdin is /dev/null and stderr is stdout when not given),
`{"op": "cancel", "id"}` or `{"op": "end", "id", "as"}`. The warden answers a waited-for run
with `{"id", "exit_code", "timed_out"}` (exit_code: the shell's convention, 128 + N when killed
by signal N), an end with `{"id", "ended": true}`, and a request it refuses with `{"id", "error"}`.
"""

from __future__ import annotations

import array
import contextlib
import json
import logging
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

from envs.sandbox import agent_processes

FD_ENV_VAR = "HILLCLIMB_WARDEN_FD"
"""Set in the server's environment: the descriptor of its end of the warden's socket."""
SOCKET_ENV_VAR = "HILLCLIMB_WARDEN_SOCKET"
"""Set in the server's environment instead, where the agent's warden runs apart (a container of
its own, under the agent's uid): the path it listens on."""
VERIFIER_SOCKET_ENV_VAR = "HILLCLIMB_VERIFIER_WARDEN_SOCKET"
"""Beside it, the path of the verifier's warden apart (a third container, the verifier's uid)."""
AGENT_UID_ENV_VAR = "HILLCLIMB_AGENT_UID"
"""Set in the server's environment: the uid the agent's commands run under."""
VERIFIER_UID_ENV_VAR = "HILLCLIMB_VERIFIER_UID"
"""Set in the server's environment: the uid what decides the reward runs under."""

ROLES = ("agent", "verifier")
MAX_MESSAGE = 1 << 20
_STREAMS = ("stdout", "stdin", "stderr")
_MAX_FDS = len(_STREAMS)

log = logging.getLogger("hillclimb.envs.warden")


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
    role: str
    deadline: float | None
    wait: bool
    timed_out: bool = False


class Warden:
    """Runs the server's requests until its socket closes (or, in a sandbox, the server exits).

    `identities`: the uid each role runs under (we are root, keeping CAP_SETUID/SETGID/KILL);
    None: every role runs under our own uid, which `apart` says is not the server's."""

    def __init__(
        self,
        sock: socket.socket,
        identities: dict[str, Identity] | None,
        server_pid: int | None = None,
        *,
        apart: bool = False,
    ) -> None:
        self.sock = sock
        self.identities = identities
        self.server_pid = server_pid
        self.apart = apart
        self.server_status: int | None = None
        self.commands: dict[int, _Command] = {}  # by pid
        self.waiting: list[tuple[dict[str, Any], list[int]]] = []  # runs held behind a cleanup

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
            for role in ROLES:
                self._end_role(role)
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
        except (BadRequest, ValueError, TypeError, KeyError, OSError) as e:  # OSError: a fork at the pids limit
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
        if op not in ("run", "end"):
            raise BadRequest(f"unknown op {op!r}")
        role = request.get("as", "agent")
        if role not in ROLES:
            raise BadRequest(f"'as' must be one of {ROLES}, got {role!r}")
        if op == "end":
            self._end(role, request["id"])
            return
        _check_run(request, fds)
        if self._behind_cleanup(role):
            self.waiting.append((request, [os.dup(fd) for fd in fds]))  # ours to close once it has run
            return
        self._start(request, fds)

    def _start(self, request: dict[str, Any], fds: list[int]) -> None:
        role = request.get("as", "agent")
        streams = dict(zip(_stream_names(request, fds), fds, strict=True))
        identity = self.identities.get(role) if self.identities is not None else None
        started_r, started_w = os.pipe()  # closed in the child by its exec: until then it may still be root
        pid = os.fork()
        if pid == 0:
            os.close(started_r)
            _exec_command(request["argv"], request["cwd"], {str(k): str(v) for k, v in request["env"].items()},
                          streams, identity, started_w)  # fmt: skip
        os.close(started_w)
        with contextlib.suppress(OSError):
            os.read(started_r, 1)
        os.close(started_r)
        timeout = request.get("timeout_s")
        deadline = time.monotonic() + float(timeout) if timeout is not None else None
        self.commands[pid] = _Command(int(request["id"]), role, deadline, bool(request.get("wait", True)))

    def _end(self, role: str, request_id: int) -> None:
        for pid in [pid for pid, command in self.commands.items() if self._same_uid(command.role, role)]:
            _kill_group(pid)
            self._finish(pid, os.waitpid(pid, 0)[1])  # what it started is an orphan now: ours to end
        self._end_role(role)
        self._reply({"id": request_id, "ended": True})
        self._start_waiting()

    def _reply(self, message: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):  # the server is gone: nobody to tell
            self.sock.send(json.dumps(message).encode())

    # -- ending a role's processes ---------------------------------------------------------

    def _same_uid(self, a: str, b: str) -> bool:
        return a == b or self.identities is None

    def _behind_cleanup(self, role: str) -> bool:
        return any(not c.wait and self._same_uid(c.role, role) for c in self.commands.values())

    def _end_role(self, role: str) -> None:
        """Kill every process of `role`'s uid but the server and us; return once they are gone."""
        keep = set(self.commands) | ({self.server_pid} if self.server_pid else set())
        if self.identities is None and not self.apart:  # the server's uid: only our orphans can go
            agent_processes.kill_orphans(keep)
            return
        identity = self.identities.get(role) if self.identities is not None else None
        if identity is not None:
            uid = identity.uid
            if not agent_processes.kill_uid(uid):
                return
        else:
            uid = os.getuid()
            agent_processes.kill_own_uid()
        stuck = agent_processes.wait_gone(uid, keep)
        if stuck:
            log.warning("processes %s of uid %d did not exit within %g s of SIGKILL", stuck, uid,
                        agent_processes.GONE_WAIT_S)  # fmt: skip

    # -- children -------------------------------------------------------------------------

    def _reap(self) -> None:
        for pid, status in agent_processes.exited_children():
            if pid == self.server_pid:
                self.server_status = os.waitstatus_to_exitcode(status) & 0xFF
            elif pid in self.commands:
                self._finish(pid, status)
        self._start_waiting()

    def _finish(self, pid: int, status: int) -> None:
        """A command has exited: end what it left, and answer for it."""
        command = self.commands.pop(pid)
        _kill_group(pid)
        if not any(self._same_uid(c.role, command.role) for c in self.commands.values()):
            self._end_role(command.role)
        if command.wait:
            code = os.waitstatus_to_exitcode(status)
            exit_code = 128 - code if code < 0 else code
            self._reply({"id": command.id, "exit_code": exit_code, "timed_out": command.timed_out})

    def _start_waiting(self) -> None:
        held, self.waiting = self.waiting, []
        for request, fds in held:
            if self._behind_cleanup(request.get("as", "agent")):
                self.waiting.append((request, fds))
                continue
            try:
                self._start(request, fds)
            except OSError as e:
                self._reply({"id": request.get("id"), "error": f"cannot start the command: {e}"})
            finally:
                for fd in fds:
                    os.close(fd)

    def _expire(self, now: float) -> None:
        for pid, command in self.commands.items():
            if command.deadline is not None and now >= command.deadline and not command.timed_out:
                command.timed_out = True
                _kill_group(pid)

    def _next_timeout(self) -> float | None:
        deadlines = [c.deadline for c in self.commands.values() if c.deadline is not None and not c.timed_out]
        return max(0.0, min(deadlines) - time.monotonic()) if deadlines else None


def _check_run(request: dict[str, Any], fds: list[int]) -> None:
    argv, cwd, env = request["argv"], request["cwd"], request["env"]
    if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
        raise BadRequest("argv must be a non-empty list of strings")
    if not isinstance(cwd, str) or not isinstance(env, dict):
        raise BadRequest("cwd must be a string and env an object")
    if not fds:
        raise BadRequest("a run request carries its output descriptor")
    streams = _stream_names(request, fds)
    if (
        not isinstance(streams, list)
        or len(streams) != len(fds)
        or streams[:1] != ["stdout"]
        or len(set(streams)) != len(streams)
        or not set(streams) <= set(_STREAMS)
    ):
        raise BadRequest(f"'streams' must name each attached descriptor, stdout first, of {_STREAMS}")


def _stream_names(request: dict[str, Any], fds: list[int]) -> Any:
    """What each attached descriptor is, as the request names them (by default stdout, then stdin)."""
    return request.get("streams", ["stdout", "stdin"][: len(fds)])


def _received_fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.extend(array.array("i", payload[: len(payload) - len(payload) % 4]))
    return fds


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _exec_command(
    argv: list[str], cwd: str, env: dict[str, str], streams: dict[str, int], identity: Identity | None, started: int
) -> NoReturn:
    """In the forked child: a session of its own, the role's uid, then exec. Never returns.
    `started`, close-on-exec, tells the warden by its closing that we hold no root any more."""
    code = 127
    try:
        os.setsid()
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        os.dup2(streams["stdin"] if "stdin" in streams else os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(streams["stdout"], 1)
        os.dup2(streams.get("stderr", streams["stdout"]), 2)
        if started != 3:
            os.dup2(started, 3, inheritable=False)
        os.closerange(4, 1 << 16)
        if identity is not None:
            identity.assume()
        code = 126
        os.chdir(cwd)  # under the role's uid: its own rights decide whether it may work there
        code = 127
        os.execvpe(argv[0], argv, env)
    except OSError as e:
        with contextlib.suppress(OSError):
            where = f"cannot start in {cwd}" if code == 126 else "cannot run"
            os.write(2, f"{argv[0]}: {where}: {e.strerror}\n".encode())
    finally:
        os._exit(code)


def start_sandbox(
    server: Callable[[], None], *, server_user: Identity | None, identities: dict[str, Identity] | None
) -> NoReturn:
    """In a sandbox's first process: fork the server (under `server_user`, told where the
    warden is and which uid each role has), then be its warden until it exits, and exit with
    its status. `identities`: "agent" and "verifier"; None: every role shares the server's uid."""
    server_end, warden_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        warden_end.close()
        if server_user is not None:
            server_user.assume()
        os.environ[FD_ENV_VAR] = str(server_end.detach())
        for role, variable in (("agent", AGENT_UID_ENV_VAR), ("verifier", VERIFIER_UID_ENV_VAR)):
            os.environ[variable] = str(identities[role].uid if identities is not None else os.getuid())
        server()  # an exception propagates to the caller's handler, in this child
        os._exit(0)
    server_end.close()
    fd = warden_end.fileno()
    os.closerange(3, fd)  # the warden holds nothing of its parent's: only stdio and its socket
    os.closerange(fd + 1, 1 << 16)
    status = Warden(warden_end, identities, server_pid=pid).serve()
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
    """`python -m envs.sandbox.warden FD`: the warden of a server outside any sandbox (same uid).

    `python -m envs.sandbox.warden --listen PATH --server-uid UID`: a warden apart from its server (a pod's
    agent or verifier container, started under that role's uid, with no capability): it waits at
    PATH for the server, runs what it asks under its own uid, and exits when the server's end closes."""
    if sys.argv[1:2] != ["--listen"]:
        sys.exit(Warden(socket.socket(fileno=int(sys.argv[1])), identities=None).serve())
    if len(sys.argv) != 5 or sys.argv[3] != "--server-uid" or not sys.argv[4].isdigit():
        sys.exit("usage: python -m envs.sandbox.warden --listen PATH --server-uid UID")
    agent_processes.keep_memory_private()  # the commands share our uid: they must not read or trace us
    sock = accept_server(sys.argv[2], int(sys.argv[4]))
    sys.exit(Warden(sock, identities=None, apart=True).serve())


if __name__ == "__main__":
    main()
