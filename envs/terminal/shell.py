"""Run one command in a fresh `bash -c`, bounded in time and in output, without blocking the loop.

    result = await run_command("sort names.txt", cwd, timeout_s=10, output_limit=16384)

Each command gets its own process group (`start_new_session=True`). When the command
ends or times out, the whole group is killed: a timed-out pipeline dies with all its
children, and a background job (`sleep 100 &`) can neither outlive its command nor hold
the output pipe open. A process that left the group (`setsid`) is killed too, in a
server that adopts orphans (see `envs.agent_processes`). stdout and stderr share one pipe, so the
output interleaves as a terminal would show it. Output past the limit is read and dropped
(so the command never blocks on a full pipe) and a note says how much was cut.

The child gets a small fixed environment, not the server's: nothing of the orchestrator
leaks into the agent's shell, and `LC_ALL=C` makes sort orders and tool messages the same
everywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from dataclasses import dataclass, field

from envs import agent_processes

_running: set[int] = set()
"""The shells of commands running now in this process: never taken for strays."""

_DRAIN_GRACE_S = 1.0
"""How long to keep reading after the group is killed; only a process that left the group
(setsid) can hold the pipe past that, and its output is not waited for."""


@dataclass(frozen=True, slots=True)
class CommandResult:
    output: str
    """stdout and stderr, merged, then any `[...]` notes; UTF-8 with bad bytes replaced."""
    exit_code: int | None
    """The shell's exit status (128 + N if killed by signal N); None if it timed out."""


@dataclass(slots=True)
class _Capture:
    """What was read so far: kept outside the reader task so a cancelled read loses nothing."""

    limit: int
    kept: bytearray = field(default_factory=bytearray)
    total: int = 0

    async def drain(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(65536):
            self.total += len(chunk)
            room = self.limit - len(self.kept)
            if room > 0:
                self.kept += chunk[:room]


def _child_environment(home: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": home,
        "LC_ALL": "C",
        "TERM": "dumb",
    }


async def run_command(command: str, cwd: str, *, timeout_s: float, output_limit: int) -> CommandResult:
    # Our own pipe, not `stdout=PIPE`: asyncio's Process.wait() would also wait for the pipe
    # to close, which a background job holds open; we must see the shell exit by itself.
    read_fd, write_fd = os.pipe()
    loop = asyncio.get_running_loop()
    stream = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(stream), os.fdopen(read_fd, "rb", buffering=0)
    )
    try:
        try:
            proc = await asyncio.create_subprocess_exec(
                "bash",
                "-c",
                "--",
                command,
                cwd=cwd,
                env=_child_environment(cwd),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=write_fd,
                stderr=write_fd,
                start_new_session=True,
            )
        except OSError as e:  # the agent removed or locked its own work dir: show it, as a shell would
            return CommandResult(f"bash: cannot start in {cwd}: {e.strerror}\n", 126)
        finally:
            os.close(write_fd)
        started = agent_processes.start_ticks(proc.pid) or 0
        _running.add(proc.pid)
        try:
            return await _supervise(proc, stream, timeout_s, output_limit)
        finally:
            _running.discard(proc.pid)
            agent_processes.kill_adopted(started, keep=_running)
    finally:
        transport.close()


async def _supervise(
    proc: asyncio.subprocess.Process, stream: asyncio.StreamReader, timeout_s: float, output_limit: int
) -> CommandResult:
    capture = _Capture(output_limit)
    reader = asyncio.create_task(capture.drain(stream))
    timed_out = False
    try:
        await asyncio.wait_for(proc.wait(), timeout_s)
    except TimeoutError:
        timed_out = True
    except asyncio.CancelledError:  # e.g. the server's step deadline: stop everything, then let it propagate
        _kill_group(proc.pid)
        reader.cancel()
        raise
    _kill_group(proc.pid)
    await proc.wait()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(reader, _DRAIN_GRACE_S)
    code = None if timed_out else _status(proc)
    return CommandResult(_render(capture, timeout_s if timed_out else None), code)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _status(proc: asyncio.subprocess.Process) -> int:
    code = proc.returncode
    assert code is not None
    return 128 - code if code < 0 else code


def _render(capture: _Capture, timed_out_after: float | None) -> str:
    text = capture.kept.decode("utf-8", errors="replace")
    notes = []
    if capture.total > capture.limit:
        notes.append(f"[output truncated: showing the first {capture.limit} of {capture.total} bytes]")
    if timed_out_after is not None:
        notes.append(f"[timed out after {timed_out_after:g} s]")
    if not notes:
        return text
    if text and not text.endswith("\n"):
        text += "\n"
    return text + "".join(f"{note}\n" for note in notes)
