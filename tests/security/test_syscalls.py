"""System calls an agent never needs are refused (new namespaces, mounts, ptrace), and the
env server's memory and /proc files are closed to the agent's commands."""

from __future__ import annotations

from typing import Any

import pytest

from providers.contract import SandboxSpec
from tests.security.agent import SERVER_PIDS, run_as_agent

# SERVER is the env server, where the reward is computed.
ATTEMPTS = f"""
SERVER=$({SERVER_PIDS} | head -1); echo server:$SERVER
unshare -U true; echo user-namespace:$?
unshare -m true; echo mount-namespace:$?
python3 -c 'import ctypes, sys; libc = ctypes.CDLL(None, use_errno=True)
print("ptrace:", libc.ptrace(16, int(sys.argv[1]), 0, 0), ctypes.get_errno())' $SERVER
cat /proc/$SERVER/environ > /dev/null && echo server-environ:readable
python3 -c 'import sys; open(f"/proc/{{sys.argv[1]}}/mem", "rb")' $SERVER 2>/dev/null && echo server-mem:open
grep Seccomp: /proc/self/status
"""


def _assert_refused(out: str) -> None:
    assert "server:" in out and "server:\n" not in out, out
    assert "user-namespace:0" not in out and "mount-namespace:0" not in out, out
    assert "ptrace: -1 1" in out, out  # EPERM
    assert "server-environ:readable" not in out and "server-mem:open" not in out, out
    assert "Seccomp:\t2" in out, out


@pytest.mark.root
async def test_a_local_sandbox_cannot_make_namespaces_or_trace(local_provider: Any) -> None:
    sandbox = await local_provider.create(SandboxSpec(env="terminal"))
    await local_provider.wait_ready(sandbox)
    _assert_refused(await run_as_agent(sandbox, ATTEMPTS))


@pytest.mark.docker
async def test_a_docker_sandbox_cannot_make_namespaces_or_trace(docker_provider: Any) -> None:
    sandbox = await docker_provider.create(SandboxSpec(env="terminal"))
    await docker_provider.wait_ready(sandbox, timeout_s=60)
    _assert_refused(await run_as_agent(sandbox, ATTEMPTS))
