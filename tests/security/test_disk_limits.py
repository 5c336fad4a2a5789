"""What a sandbox writes is bounded in total, and never lands on the host's disk.

The agent writes five 60 MiB files (each under the per-file limit) into its work dir; with
`disk_mb=64` the total must stop at the limit. The server's socket dir, the one other
host-backed directory, is not the agent's to write at all, and is a small tmpfs besides.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from providers.contract import Resources, SandboxSpec
from tests.security.agent import run_as_agent

FILL = "for i in 1 2 3 4 5; do head -c 60M /dev/zero > {dir}/fill$i || break; done; echo done"


def _bytes_under(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def _mounted_at(path: Path) -> str | None:
    """The filesystem type mounted exactly at `path` in this (the host's) mount namespace."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == str(path):
            return fields[fields.index("-") + 1]
    return None


@pytest.mark.root
async def test_a_local_sandbox_cannot_fill_the_hosts_disk(local_provider: Any) -> None:
    sandbox = await local_provider.create(SandboxSpec(env="terminal", resources=Resources(disk_mb=64)))
    await local_provider.wait_ready(sandbox)
    home = local_provider.root / sandbox.id
    run_dir = Path(urlsplit(sandbox.endpoint).path).parent
    out = await run_as_agent(sandbox, FILL.format(dir=".") + "; " + FILL.format(dir="/run/hillclimb"))
    assert out.count("No space left on device") == 1 and "/run/hillclimb/fill1: Permission denied" in out, out
    assert _bytes_under(home / "work") == 0  # the work dir lives in the sandbox's own tmpfs
    assert _mounted_at(run_dir) == "tmpfs" and _bytes_under(run_dir) <= 256 * 1024


@pytest.mark.docker
async def test_a_docker_sandbox_cannot_fill_the_hosts_disk_through_its_socket_dir(docker_provider: Any) -> None:
    sandbox = await docker_provider.create(SandboxSpec(env="terminal", resources=Resources(disk_mb=64)))
    await docker_provider.wait_ready(sandbox, timeout_s=60)
    out = await run_as_agent(sandbox, FILL.format(dir="/run/hillclimb") + "; " + FILL.format(dir="."))
    assert out.count("No space left on device") == 1 and "/run/hillclimb/fill1: Permission denied" in out, out
    sock_dir = docker_provider.root / sandbox.id / "sock"
    assert _mounted_at(sock_dir) == "tmpfs" and _bytes_under(sock_dir) <= 256 * 1024
