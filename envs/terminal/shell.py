"""Run one command in a fresh `bash -c`, as the agent, bounded in time and in output, without blocking the loop.

    result = await run_command("sort names.txt", cwd, timeout_s=10, output_limit=16384)

The command runs under the agent's uid, started by the sandbox's warden (see `envs.warden`),
in a process group of its own: when it ends or times out the whole group is killed, and
so is whatever escaped the group (`setsid`, daemons), so a background job (`sleep 100 &`)
can neither outlive its command nor hold the output pipe open. stdout and stderr share
one pipe, so the output interleaves as a terminal would show it. Output past the limit is
read and dropped (so the command never blocks on a full pipe) and a note says how much
was cut.

The child gets a small fixed environment, not the server's: nothing of the orchestrator
leaks into the agent's shell, and `LC_ALL=C` makes sort orders and tool messages the same
everywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass, field

from envs.agent_commands import agent_commands

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


def agent_environment(home: str) -> dict[str, str]:
    """The whole environment of an agent's command: nothing of the server's but PATH."""
    return {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": home,
        "LC_ALL": "C",
        "TERM": "dumb",
    }


async def run_command(command: str, cwd: str, *, timeout_s: float, output_limit: int) -> CommandResult:
    return await run_as_agent(["bash", "-c", "--", command], cwd, timeout_s=timeout_s, output_limit=output_limit)


async def run_as_agent(
    argv: list[str], cwd: str, *, timeout_s: float, output_limit: int, stdin_fd: int | None = None
) -> CommandResult:
    """Run `argv` as the agent in `cwd` (`stdin_fd`, else /dev/null, as its input); its output, capped."""
    read_fd, write_fd = os.pipe()
    loop = asyncio.get_running_loop()
    stream = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(stream), os.fdopen(read_fd, "rb", buffering=0)
    )
    capture = _Capture(output_limit)
    reader = asyncio.create_task(capture.drain(stream))
    try:
        try:
            done = await agent_commands().run(
                argv, cwd=cwd, env=agent_environment(cwd), out_fd=write_fd, timeout_s=timeout_s, stdin_fd=stdin_fd
            )
        finally:
            os.close(write_fd)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(reader), _DRAIN_GRACE_S)
        return CommandResult(
            _render(capture, timeout_s if done.timed_out else None), None if done.timed_out else done.exit_code
        )
    finally:
        reader.cancel()
        transport.close()


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
