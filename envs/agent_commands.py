"""The env server's side of the warden (`envs.warden`): run commands as the agent.

    exit = await agent_commands().run(["bash", "-c", "--", "ls"], cwd=workdir, env=env, out_fd=w, timeout_s=10)

In a sandbox the warden is the server's parent and its socket is inherited (`$HILLCLIMB_WARDEN_FD`).
Where it runs apart, under the agent's uid (a pod's second container: no capability may switch
uids there), the server connects to the path in `$HILLCLIMB_WARDEN_SOCKET` once, at start.
Anywhere else (tests, `hillclimb env serve` on a laptop) the first call starts one as a child
process running under the server's own uid, so that there is one way to run an agent's command.
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
from dataclasses import dataclass
from typing import Any

import envs
from envs import warden
from envs.agent_processes import keep_memory_private
from envs.errors import ExecutionError

_SEND_WAIT_S = 1.0
_WARDEN_WAIT_S = 30.0  # a warden in another container may start after the server


class WardenGoneError(ExecutionError):
    """The warden exited or refused a request: no command can run in this sandbox any more."""


@dataclass(frozen=True, slots=True)
class CommandExit:
    exit_code: int
    """The shell's convention: the status, or 128 + N when killed by signal N."""
    timed_out: bool


class AgentCommands:
    """A connection to a warden; usable from any event loop, and from sync code for `detach`."""

    def __init__(self, sock: socket.socket, agent_uid: int, process: subprocess.Popen[bytes] | None = None) -> None:
        self.sock = sock
        self.process = process
        """The warden, when it is our own child (outside a sandbox)."""
        self.agent_uid = agent_uid
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._gone = False

    async def run(
        self,
        argv: list[str],
        *,
        cwd: str,
        env: dict[str, str],
        out_fd: int,
        timeout_s: float | None,
        stdin_fd: int | None = None,
    ) -> CommandExit:
        """Run `argv` as the agent with stdout and stderr on `out_fd`; wait for it and everything it started.

        Cancelling the call kills the command (and its process group) before re-raising."""
        loop = asyncio.get_running_loop()
        self._listen(loop)
        request_id = next(self._ids)
        reply: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._waiting[request_id] = reply
        fds = [out_fd] if stdin_fd is None else [out_fd, stdin_fd]
        try:
            self._send(
                {"op": "run", "id": request_id, "argv": argv, "cwd": cwd, "env": env, "timeout_s": timeout_s}, fds
            )
            answer = await reply
        except asyncio.CancelledError:
            with contextlib.suppress(WardenGoneError):
                self._send({"op": "cancel", "id": request_id}, [])
            raise
        finally:
            self._waiting.pop(request_id, None)
        if "error" in answer:
            raise WardenGoneError(f"the warden refused a command: {answer['error']}")
        return CommandExit(answer["exit_code"], answer["timed_out"])

    def close(self) -> None:
        """Close our end; a warden of our own then kills what it still runs and exits."""
        self._gone = True
        self.sock.close()
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(_SEND_WAIT_S)

    def detach(self, argv: list[str], *, cwd: str, env: dict[str, str]) -> None:
        """Start `argv` as the agent and do not wait (e.g. a cleanup from sync code); output is dropped."""
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
                # The warden is this sandbox's first process: with it gone the sandbox is dying.
                # Answering now would blame the environment for what is a dead sandbox.
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


_commands: tuple[int, AgentCommands] | None = None


def agent_shares_our_uid() -> bool:
    """True unless this process's warden runs the agent's commands under a uid of their own."""
    return int(os.environ.get(warden.AGENT_UID_ENV_VAR, os.getuid())) == os.getuid()


def agent_commands() -> AgentCommands:
    """This process's connection to its warden: the inherited one, else a new child warden."""
    global _commands
    if _commands is None or _commands[0] != os.getpid():  # a forked child needs its own
        if agent_shares_our_uid():  # before any command of the agent exists: our memory is not its to read
            keep_memory_private()
        inherited = os.environ.pop(warden.FD_ENV_VAR, None)
        apart = os.environ.get(warden.SOCKET_ENV_VAR)
        agent_uid = int(os.environ.get(warden.AGENT_UID_ENV_VAR, os.getuid()))
        if inherited:
            sock, process = socket.socket(fileno=int(inherited)), None
        elif apart:
            sock, process = _connect_warden(apart, agent_uid), None
        else:
            sock, process = _start_warden()
        sock.setblocking(False)
        _commands = (os.getpid(), AgentCommands(sock, agent_uid, process))
        atexit.register(_commands[1].close)
    return _commands[1]


def _connect_warden(path: str, agent_uid: int, wait_s: float = _WARDEN_WAIT_S) -> socket.socket:
    """Connect to a warden listening apart (another container of the pod), waiting for it to
    start. It must run as the agent's uid: a socket found there under any other is refused."""
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
    uid = warden.peer_uid(sock)
    if uid != agent_uid:
        sock.close()
        raise WardenGoneError(f"the socket at {path} is served by uid {uid}, not the agent's {agent_uid}")
    return sock


def _start_warden() -> tuple[socket.socket, subprocess.Popen[bytes]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    source_root = os.path.dirname(os.path.dirname(os.path.abspath(envs.__file__)))
    environ = {**os.environ, "PYTHONPATH": source_root}
    with theirs:
        # It exits when our end of the socket closes, i.e. when this process does.
        process = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "envs.warden", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            env=environ,
        )
    return ours, process
