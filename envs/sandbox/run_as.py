"""Run one command as a role of the sandbox, bounded in time and in output, without blocking the loop.

    result = await run_as("agent", ["sort", "names.txt"], cwd, timeout_s=10, output_limit=16384)

The command runs under the role's uid ("agent": the agent's commands; "verifier": what decides
a reward), started by the sandbox's warden (see `envs.sandbox.warden`) in a process group of its own:
when it ends or times out, so does everything it started, so a background job (`sleep 100 &`)
can neither outlive its command nor hold the output pipe open. stdout and stderr share one
pipe, so the output interleaves as a terminal would show it. Output past the limit is read
and dropped (so the command never blocks on a full pipe) and a note says how much was cut.

The child gets a small fixed environment, not the server's: nothing of the orchestrator
leaks into it, and `LC_ALL=C` makes sort orders and tool messages the same everywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from envs.deadline import within
from envs.sandbox.agent_commands import agent_commands, verifier_commands

_DRAIN_GRACE_S = 1.0
"""How long to keep reading after the command and its strays are killed (a process that
escaped them could still hold the pipe; its output is not waited for)."""


@dataclass(frozen=True, slots=True)
class CommandResult:
    output: str
    """stdout and stderr, merged, then any `[...]` notes; UTF-8 with bad bytes replaced."""
    exit_code: int | None
    """The shell's exit status (128 + N if killed by signal N); None if it timed out."""


@dataclass(slots=True)
class Capture:
    """What was read of a command's output so far: kept outside the reader task so a cancelled
    read loses nothing."""

    limit: int
    kept: bytearray = field(default_factory=bytearray)
    total: int = 0

    async def drain(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(65536):
            self.total += len(chunk)
            room = self.limit - len(self.kept)
            if room > 0:
                self.kept += chunk[:room]

    def render(self, timed_out_after: float | None) -> str:
        text = self.kept.decode("utf-8", errors="replace")
        notes = []
        if self.total > self.limit:
            notes.append(f"[output truncated: showing the first {self.limit} of {self.total} bytes]")
        if timed_out_after is not None:
            notes.append(f"[timed out after {timed_out_after:g} s]")
        if not notes:
            return text
        if text and not text.endswith("\n"):
            text += "\n"
        return text + "".join(f"{note}\n" for note in notes)


def command_environment(home: str) -> dict[str, str]:
    """The whole environment of a command: nothing of the server's but PATH."""
    return {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": home,
        "LC_ALL": "C",
        "TERM": "dumb",
    }


@contextlib.asynccontextmanager
async def captured_pipe(capture: Capture) -> AsyncIterator[int]:
    """A pipe whose read end `capture` drains on the loop; yields the write end (closed on exit,
    after which the rest is drained for up to a short grace)."""
    read_fd, write_fd = os.pipe()
    loop = asyncio.get_running_loop()
    stream = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(stream), os.fdopen(read_fd, "rb", buffering=0)
    )
    reader = asyncio.create_task(capture.drain(stream))
    try:
        try:
            yield write_fd
        finally:
            os.close(write_fd)
        with contextlib.suppress(TimeoutError):
            await within(_DRAIN_GRACE_S, asyncio.shield(reader))
    finally:
        reader.cancel()
        transport.close()


async def run_as(
    role: str, argv: list[str], cwd: str, *, timeout_s: float, output_limit: int, stdin_fd: int | None = None
) -> CommandResult:
    """Run `argv` as `role` in `cwd` (`stdin_fd`, else /dev/null, as its input); its output, capped."""
    commands = agent_commands() if role == "agent" else verifier_commands()
    capture = Capture(output_limit)
    async with captured_pipe(capture) as out_fd:
        done = await commands.run(
            argv,
            cwd=cwd,
            env=command_environment(cwd),
            out_fd=out_fd,
            timeout_s=timeout_s,
            stdin_fd=stdin_fd,
            role=role,
        )
    return CommandResult(
        capture.render(timeout_s if done.timed_out else None), None if done.timed_out else done.exit_code
    )
