"""wss:// end to end: a server serving TLS with a certificate made for this test, a client that
trusts it, and one that does not (a typed error, no retry loop until the connect deadline)."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sample_envs import CounterEnv

from envs.client import EnvClient
from envs.errors import TLSError
from envs.runtime import EnvRuntime
from envs.serve import server_tls
from envs.server import EnvServer

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1, valid for a day, and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "hillclimb test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


async def test_wss_episode_with_a_trusted_certificate_and_a_typed_refusal_without(tmp_path: Path, calls) -> None:
    cert, key = _self_signed(tmp_path)
    server = EnvServer(EnvRuntime(CounterEnv), token="tls-token")
    port = await server.start_tcp("127.0.0.1", 0, ssl=server_tls(str(cert), str(key)))
    try:
        trusting = ssl.create_default_context(cafile=str(cert))
        async with EnvClient(f"wss://127.0.0.1:{port}", token="tls-token", ssl=trusting) as client:
            assert (await client.reset(start=4)).observation["total"] == 4
            assert (await client.step({"amount": 3})).observation["total"] == 7
        started = time.monotonic()
        with pytest.raises(TLSError, match="CERTIFICATE_VERIFY_FAILED.*self-signed"):
            await EnvClient(f"wss://127.0.0.1:{port}", token="tls-token", connect_timeout_s=10).connect()
        assert time.monotonic() - started < 2  # refused at once, not retried until the deadline
        assert calls.created == 1  # the untrusted attempt never reached the server's sessions
    finally:
        await server.close()


@pytest.mark.parametrize("program", [["envs"], ["orchestrator", "env", "serve"]], ids=["python -m envs", "hillclimb"])
async def test_the_serve_commands_serve_tls(tmp_path: Path, program: list[str]) -> None:
    cert, key = _self_signed(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", *program, "toy_terminal", "--port", str(port), "--no-auth"]
    server = subprocess.Popen([*command, "--tls-cert", str(cert), "--tls-key", str(key)], cwd=Path(__file__).parents[2])
    try:
        trusting = ssl.create_default_context(cafile=str(cert))
        async with EnvClient(f"wss://127.0.0.1:{port}", ssl=trusting, connect_timeout_s=30) as client:
            result = await client.reset(task_id="cat-app-order")
            assert "app.log" in result.observation["prompt"]
    finally:
        server.terminate()
        server.wait(timeout=10)
    refused = subprocess.run(
        [*command, "--uds", str(tmp_path / "s.sock"), "--tls-cert", str(cert)], capture_output=True
    )
    assert refused.returncode == 2 and b"--tls-cert is for TCP" in refused.stdout + refused.stderr
