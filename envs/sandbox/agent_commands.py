"""The env server's side of the warden (`envs.sandbox.warden`): run commands as the agent, or as the verifier.

    exit = await agent_commands().run(["bash", "-c", "--", "ls"], cwd=workdir, env=env, out_fd=w, timeout_s=10)

In a sandbox the warden is the server's parent and its socket is inherited (`$HILLCLIMB_WARDEN_FD`):
one warden runs both roles, each under its uid. Where the wardens run apart, each under its role's
uid (a pod's agent and verifier containers: no capability may switch uids there), the server
connects to the paths in `$HILLCLIMB_WARDEN_SOCKET` and `$HILLCLIMB_VERIFIER_WARDEN_SOCKET` once,
at start. Anywhere else (tests, `hillclimb env serve` on a laptop) the first call starts one as a
child process running under the server's own uid, so that there is one way to run a command.
"""

from __future__ import annotations

import array
import asyncio
import atexit
import contextlib
import itertools
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import envs
from envs.sandbox import warden
from envs.sandbox.agent_processes import keep_memory_private
from hillclimb.errors import ExecutionError

_SEND_WAIT_S = 1.0
_WARDEN_WAIT_S = 30.0  # a warden in another container may start after the server
_holding: ContextVar[asyncio.Future[None] | None] = ContextVar("warden_hold", default=None)


class WardenGoneError(ExecutionError):
    """The warden exited or refused a request: no command can run in this sandbox any more."""


@dataclass(frozen=True, slots=True)
class CommandExit:
    exit_code: int
    """The shell's convention: the status, or 128 + N when killed by signal N."""
    timed_out: bool


class WardenClient:
    """A connection to a warden; usable from any event loop, and from sync code for `detach`."""

    def __init__(self, sock: socket.socket, process: subprocess.Popen[bytes] | None = None) -> None:
        self.sock = sock
        self.process = process
        """The warden, when it is our own child (outside a sandbox)."""
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._gone = False
        self._hold: asyncio.Future[None] | None = None
        self._running = 0  # runs in flight, the holder's aside
        self._settled: asyncio.Future[None] | None = None  # set when the last of them ends

    def run(
        self,
        argv: list[str],
        *,
        cwd: str,
        env: dict[str, str],
        out_fd: int,
        timeout_s: float | None,
        stdin_fd: int | None = None,
        stderr_fd: int | None = None,
        role: str = "agent",
    ) -> Awaitable[CommandExit]:
        """Run `argv` as `role` with stdout (and stderr, unless `stderr_fd`) on `out_fd`; the
        awaitable gives its exit. When it ends, so does everything it started. The request goes
        out at once, unless another task holds the warden (`hold`): then once it lets go. Sent,
        the descriptors are the warden's own: close ours (e.g. a pipe's ends that two commands
        share). Cancelling the wait kills the command (and its process group) before re-raising."""
        fds, streams = [out_fd], ["stdout"]
        for fd, stream in ((stdin_fd, "stdin"), (stderr_fd, "stderr")):
            if fd is not None:
                fds.append(fd)
                streams.append(stream)
        message = {"op": "run", "as": role, "argv": argv, "cwd": cwd, "env": env, "timeout_s": timeout_s}
        message["streams"] = streams
        if self._hold is not None and _holding.get() is not self._hold:
            return self._run_once_released(message, fds)
        return self._sent_run(message, fds)

    async def _run_once_released(self, message: dict[str, Any], fds: list[int]) -> CommandExit:
        while self._hold is not None and _holding.get() is not self._hold:
            await asyncio.shield(self._hold)
        return await self._sent_run(message, fds)

    def _sent_run(self, message: dict[str, Any], fds: list[int]) -> Awaitable[CommandExit]:
        request_id, reply = self._request(message, fds)
        counted = _holding.get() is None  # a holder's own runs do not keep its hold waiting
        self._running += counted
        return self._exit_of(request_id, reply, counted)

    async def _exit_of(self, request_id: int, reply: asyncio.Future[dict[str, Any]], counted: bool) -> CommandExit:
        try:
            answer = await self._answer(request_id, reply, cancel=True)
        finally:
            self._running -= counted
            if not self._running and self._settled is not None and not self._settled.done():
                self._settled.set_result(None)
        if "error" in answer:
            raise WardenGoneError(f"the warden refused a command: {answer['error']}")
        return CommandExit(answer["exit_code"], answer["timed_out"])

    async def end(self, role: str) -> None:
        """Kill every process of `role`, its running commands too; return once they are gone."""
        answer = await self._answer(*self._request({"op": "end", "as": role}, []), cancel=False)
        if "error" in answer:
            raise WardenGoneError(f"the warden refused to end the {role}'s processes: {answer['error']}")

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        """Keep every other task's commands on this warden waiting until the block ends (what a
        verification needs: no agent command may start while it runs), once those already
        running have ended. One holder at a time: the others wait their turn."""
        while self._hold is not None:
            await asyncio.shield(self._hold)
        loop = asyncio.get_running_loop()
        self._hold = loop.create_future()
        while self._running:
            self._settled = loop.create_future()
            await asyncio.shield(self._settled)
        token = _holding.set(self._hold)
        try:
            yield
        finally:
            _holding.reset(token)
            released, self._hold = self._hold, None
            released.set_result(None)

    def _request(self, message: dict[str, Any], fds: list[int]) -> tuple[int, asyncio.Future[dict[str, Any]]]:
        loop = asyncio.get_running_loop()
        self._listen(loop)
        request_id = next(self._ids)
        reply: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._waiting[request_id] = reply
        try:
            self._send({**message, "id": request_id}, fds)
        except WardenGoneError:
            self._waiting.pop(request_id, None)
            raise
        return request_id, reply

    async def _answer(self, request_id: int, reply: asyncio.Future[dict[str, Any]], *, cancel: bool) -> dict[str, Any]:
        try:
            return await reply
        except asyncio.CancelledError:
            if cancel:
                with contextlib.suppress(WardenGoneError):
                    self._send({"op": "cancel", "id": request_id}, [])
            raise
        finally:
            self._waiting.pop(request_id, None)

    def close(self) -> None:
        """Close our end; a warden of our own then kills what it still runs and exits."""
        self._gone = True
        self.sock.close()
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(_SEND_WAIT_S)

    def detach(self, argv: list[str], *, cwd: str, env: dict[str, str]) -> None:
        """Start `argv` as the agent and do not wait (e.g. a cleanup from sync code); output is
        dropped. The agent's next commands wait for it."""
        with open(os.devnull, "wb") as null:
            self._send(
                {"op": "run", "id": next(self._ids), "argv": argv, "cwd": cwd, "env": env, "wait": False},
                [null.fileno()],
            )

    def _send(self, message: dict[str, Any], fds: list[int]) -> None:
        if self._gone:
            raise WardenGoneError("the sandbox's warden is gone")
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        try:
            while True:
                try:
                    self.sock.sendmsg([json.dumps(message).encode()], ancillary)
                    break
                except BlockingIOError:  # the warden is behind: a short wait, it reads as fast as it forks
                    select.select([], [self.sock], [], _SEND_WAIT_S)
        except OSError as e:
            self._gone = True
            raise WardenGoneError(f"the sandbox's warden is gone: {e}") from e

    def _listen(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is loop:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self.sock.fileno())
        loop.add_reader(self.sock.fileno(), self._on_readable)
        self._loop = loop

    def _on_readable(self) -> None:
        try:
            data = self.sock.recv(warden.MAX_MESSAGE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            if self.process is None:
                # The warden is this sandbox's first process (or a container of its pod): with it
                # gone the sandbox is dying. Answering now would blame the environment for what is
                # a dead sandbox.
                os.kill(os.getpid(), signal.SIGKILL)
            self._gone = True
            assert self._loop is not None
            self._loop.remove_reader(self.sock.fileno())
            for reply in self._waiting.values():
                if not reply.done():
                    reply.set_exception(WardenGoneError("the sandbox's warden is gone"))
            return
        answer = json.loads(data)
        reply = self._waiting.get(answer.get("id"))
        if reply is not None and not reply.done():
            reply.set_result(answer)


_wardens: tuple[int, dict[str, WardenClient]] | None = None


def role_uid(role: str) -> int:
    """The uid `role`'s commands run under ("agent" or "verifier")."""
    variable = warden.AGENT_UID_ENV_VAR if role == "agent" else warden.VERIFIER_UID_ENV_VAR
    return int(os.environ.get(variable, os.getuid()))


def agent_shares_our_uid() -> bool:
    """True unless this process's warden runs the agent's commands under a uid of their own."""
    return role_uid("agent") == os.getuid()


def agent_commands() -> WardenClient:
    """The warden that runs the agent's commands: the inherited one, else a new child warden."""
    return _connected()["agent"]


def verifier_commands() -> WardenClient:
    """The warden that runs what decides a reward: the agent's, but where the roles' wardens run apart."""
    return _connected()["verifier"]


def _connected() -> dict[str, WardenClient]:
    global _wardens
    if _wardens is None or _wardens[0] != os.getpid():  # a forked child needs its own
        if agent_shares_our_uid():  # before any command of the agent exists: our memory is not its to read
            keep_memory_private()
        inherited = os.environ.pop(warden.FD_ENV_VAR, None)
        apart = os.environ.get(warden.SOCKET_ENV_VAR)
        if inherited:
            client = WardenClient(socket.socket(fileno=int(inherited)))
        elif apart:
            client = WardenClient(_connect_warden(apart, role_uid("agent")))
        else:
            client = WardenClient(*_start_warden())
        clients = {"agent": client, "verifier": client}
        verifier_apart = os.environ.get(warden.VERIFIER_SOCKET_ENV_VAR)
        if apart and verifier_apart:
            clients["verifier"] = WardenClient(_connect_warden(verifier_apart, role_uid("verifier")))
        for each in {id(c): c for c in clients.values()}.values():
            each.sock.setblocking(False)
            atexit.register(each.close)
        _wardens = (os.getpid(), clients)
    return _wardens[1]


def _connect_warden(path: str, uid: int, wait_s: float = _WARDEN_WAIT_S) -> socket.socket:
    """Connect to a warden listening apart (another container of the pod), waiting for it to
    start. It must run as its role's uid: a socket found there under any other is refused."""
    deadline = time.monotonic() + wait_s
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            sock.connect(path)
            break
        except (FileNotFoundError, ConnectionRefusedError) as e:
            sock.close()
            if time.monotonic() > deadline:
                raise WardenGoneError(f"no warden at {path} within {wait_s:g} s: {e}") from e
            time.sleep(0.05)
    served_by = warden.peer_uid(sock)
    if served_by != uid:
        sock.close()
        raise WardenGoneError(f"the socket at {path} is served by uid {served_by}, not the role's {uid}")
    return sock


def _start_warden() -> tuple[socket.socket, subprocess.Popen[bytes]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    source_root = os.path.dirname(os.path.dirname(os.path.abspath(envs.__file__)))
    environ = {**os.environ, "PYTHONPATH": source_root}
    with theirs:
        # It exits when our end of the socket closes, i.e. when this process does.
        process = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "envs.sandbox.warden", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            env=environ,
        )
    return ours, process
