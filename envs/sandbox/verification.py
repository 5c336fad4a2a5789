"""What decides a reward runs out of the agent's reach.

    verdict = await run_verifier(script, workdir, timeout_s=30, output_limit=16384)

A verifier that ran beside the agent could be read, stopped or rewritten by a process the
agent left behind, and anything it ran as the agent's uid could be. So a verification:

1. holds the sandbox's agent commands (another session's running ones are let finish, new
   ones wait until it is over) and ends every process of the agent's uid (the warden's `end`):
   none is alive while it runs;
2. copies the episode's work dir: `tar` running as the agent (so it reads only what the agent
   could read, follows none of its links and opens none of its FIFOs) into `tar` running as
   the verifier, which unpacks it in a fresh directory of its own under `$HILLCLIMB_VERIFY_DIR`
   (a tmpfs only the verifier's uid may enter);
3. runs the bash `script` there as the verifier, a uid of its own, from a file only that uid
   can read, which removes itself once bash has opened it. The bash is an execute-only copy
   (`$HILLCLIMB_VERIFIER_SHELL`): executing a file it cannot read leaves the process
   non-dumpable, so the agent's programs the script runs (a script under test) cannot read or
   write its memory or descriptors either, though they share its uid;
4. ends every process of the verifier's uid and removes the copy.

The verifier sees the work dir as the agent left it, owned by the verifier: the agent's files
with their modes, links and FIFOs, less what the agent's own uid could not read. It reads no
file the agent could not. Outside a sandbox (tests, `hillclimb env serve`) every role shares
the server's uid, and the copy goes under a temporary directory.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import tempfile

from envs.sandbox.agent_commands import agent_commands, verifier_commands
from envs.sandbox.run_as import Capture, CommandResult, captured_pipe, command_environment, run_as

VERIFY_DIR_ENV_VAR = "HILLCLIMB_VERIFY_DIR"
"""A directory only the verifier's uid may enter, where each verification copies the work dir."""
VERIFIER_SHELL_ENV_VAR = "HILLCLIMB_VERIFIER_SHELL"
"""An execute-only copy of bash, for the verifier: it runs non-dumpable."""

_UNPACK = ("sh", "-c", 'mkdir -m 0700 -- "$1" && exec tar -x -p --no-same-owner -f - -C "$1"', "sh")
_LAUNCH = ("sh", "-c", 'umask 077 && cat > "$1" && exec "$2" "$1" </dev/null', "sh")
_REMOVE = ("rm", "-rf", "--")
_CLEANUP_TIMEOUT_S = 30.0
_NOTE_LIMIT = 1024


async def run_verifier(script: str, workdir: str, *, timeout_s: float, output_limit: int) -> CommandResult:
    """Run the bash `script` on a copy of `workdir`, out of the agent's reach (see the module's
    docstring); its output (with a note if the copy was incomplete) and exit status. The copy
    and the script each have `timeout_s`."""
    root = os.environ.get(VERIFY_DIR_ENV_VAR) or tempfile.gettempdir()
    name = f"verify-{secrets.token_hex(8)}"
    copy, script_path = os.path.join(root, name), os.path.join(root, f".{name}.sh")
    agent, verifier = agent_commands(), verifier_commands()
    async with agent.hold():
        await agent.end("agent")
        try:
            copy_note = await _copy(workdir, copy, timeout_s)
            result = await _run_script(script, copy, script_path, timeout_s, output_limit)
        finally:
            await verifier.end("verifier")
            await run_as("verifier", [*_REMOVE, copy, script_path], root, timeout_s=_CLEANUP_TIMEOUT_S, output_limit=0)
    if copy_note:
        separator = "\n" if result.output and not result.output.endswith("\n") else ""
        return CommandResult(f"{result.output}{separator}{copy_note}\n", result.exit_code)
    return result


async def _copy(workdir: str, copy: str, timeout_s: float) -> str:
    """Copy `workdir` (as the agent) into `copy` (as the verifier); a note if it was incomplete."""
    agent, verifier = agent_commands(), verifier_commands()
    packed, unpacked = Capture(_NOTE_LIMIT), Capture(_NOTE_LIMIT)
    read_fd, write_fd = os.pipe()
    async with captured_pipe(packed) as pack_err, captured_pipe(unpacked) as unpack_out:
        try:
            pack = agent.run(
                ["tar", "-c", "-f", "-", "-C", workdir, "."],
                cwd="/", env=command_environment("/"), out_fd=write_fd, stderr_fd=pack_err, timeout_s=timeout_s,
            )  # fmt: skip
            unpack = verifier.run(
                [*_UNPACK, copy], cwd="/", env=command_environment("/"), out_fd=unpack_out, stdin_fd=read_fd,
                timeout_s=timeout_s, role="verifier",
            )  # fmt: skip
        finally:  # held, both went out at once: the wardens' copies are theirs, ours would keep the pipe open
            os.close(read_fd)
            os.close(write_fd)
        packed_exit, unpacked_exit = await asyncio.gather(pack, unpack)
    problems = [
        f"{what} exited {done.exit_code}{' (timed out)' if done.timed_out else ''}: {capture.render(None).strip()}"
        for what, done, capture in (("packing", packed_exit, packed), ("unpacking", unpacked_exit, unpacked))
        if done.exit_code != 0 or done.timed_out
    ]
    return f"[the work dir's copy for the verifier is incomplete: {'; '.join(problems)}]" if problems else ""


async def _run_script(script: str, copy: str, script_path: str, timeout_s: float, output_limit: int) -> CommandResult:
    shell = os.environ.get(VERIFIER_SHELL_ENV_VAR) or shutil.which("bash") or "bash"
    with tempfile.TemporaryFile() as source:  # a descriptor the verifier reads: the file has no name
        source.write(f'rm -f -- "$0"; {script}'.encode())
        source.seek(0)
        return await run_as(
            "verifier", [*_LAUNCH, script_path, shell], copy, timeout_s=timeout_s, output_limit=output_limit,
            stdin_fd=source.fileno(),
        )  # fmt: skip
