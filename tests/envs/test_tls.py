"""wss:// end to end: a server serving TLS with a certificate from a private CA, a client that
trusts the CA, and one that does not (a typed error, no retry loop until the connect deadline)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sample_envs import CounterEnv

from envs.client.ws_client import EnvClient
from envs.server.env_server import EnvServer
from envs.server.runtime import EnvRuntime
from envs.server.serve import server_tls
from hillclimb.errors import TLSError
from tests.private_ca import PrivateCA


async def test_wss_episode_with_a_trusted_certificate_and_a_typed_refusal_without(tmp_path: Path, calls) -> None:
    ca = PrivateCA(tmp_path)
    cert, key = ca.issue()
    server = EnvServer(EnvRuntime(CounterEnv), token="tls-token")
    port = await server.start_tcp("127.0.0.1", 0, ssl=server_tls(str(cert), str(key)))
    try:
        async with EnvClient(f"wss://127.0.0.1:{port}", token="tls-token", ssl=ca.client_context()) as client:
            assert (await client.reset(start=4)).observation["total"] == 4
            assert (await client.step({"amount": 3})).observation["total"] == 7
        started = time.monotonic()
        with pytest.raises(TLSError, match="CERTIFICATE_VERIFY_FAILED.*local issuer"):
            await EnvClient(f"wss://127.0.0.1:{port}", token="tls-token", connect_timeout_s=60).connect()
        assert time.monotonic() - started < 30  # refused at once, not retried until the deadline
        assert calls.created == 1  # the untrusted attempt never reached the server's sessions
    finally:
        await server.close()


@pytest.mark.parametrize("program", [["envs"], ["orchestrator", "env", "serve"]], ids=["python -m envs", "hillclimb"])
async def test_the_serve_commands_serve_tls(tmp_path: Path, program: list[str]) -> None:
    ca = PrivateCA(tmp_path)
    cert, key = ca.issue()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", *program, "toy_terminal", "--port", str(port), "--no-auth"]
    server = subprocess.Popen([*command, "--tls-cert", str(cert), "--tls-key", str(key)], cwd=Path(__file__).parents[2])
    try:
        async with EnvClient(f"wss://127.0.0.1:{port}", ssl=ca.client_context(), connect_timeout_s=30) as client:
            result = await client.reset(task_id="cat-app-order")
            assert "app.log" in result.observation["prompt"]
    finally:
        server.terminate()
        server.wait(timeout=10)
    refused = subprocess.run(
        [*command, "--uds", str(tmp_path / "s.sock"), "--tls-cert", str(cert)], capture_output=True
    )
    assert refused.returncode == 2 and b"--tls-cert is for TCP" in refused.stdout + refused.stderr
