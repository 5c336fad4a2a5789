"""What the Docker provider makes of the engine's refusals, against an engine stand-in that
speaks Docker's HTTP API on a Unix socket and refuses container creation with a chosen status."""

from __future__ import annotations

import json
import socketserver
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from hillclimb.provider_errors import BadSpecError, CapacityError, FatalProviderError, RetryableProviderError
from providers.contract import SandboxSpec


class _RefusingEngine(socketserver.ThreadingUnixStreamServer):
    """Answers POST /containers/create with `status` (and `headers`); records every request."""

    daemon_threads = True

    def __init__(self, path: str, status: int, headers: dict[str, str]) -> None:
        self.status, self.headers, self.requests = status, headers, []
        super().__init__(path, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _RefusingEngine

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        self.server.requests.append(f"POST {self.path.split('?')[0]}")
        body = json.dumps({"message": f"refused with {self.server.status} on purpose"}).encode()
        self.send_response(self.server.status)
        for name, value in {"Content-Type": "application/json", **self.server.headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[_RefusingEngine]:
    status, headers = request.param
    server = _RefusingEngine(str(tmp_path / "docker.sock"), status, headers)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("engine", "error", "delay_s"),
    [
        ((429, {"Retry-After": "2.5"}), CapacityError, 2.5),  # busy: wait as long as the engine asks
        ((429, {}), CapacityError, 1.0),
        ((409, {}), RetryableProviderError, 1.0),  # a name still held by a container being removed
        ((400, {}), BadSpecError, None),  # a spec the engine cannot run: retrying cannot help
        ((500, {}), RetryableProviderError, 1.0),
    ],
    indirect=["engine"],
)
async def test_engine_refusals_become_typed_errors(
    engine: _RefusingEngine, tmp_path: Path, error: type[Exception], delay_s: float | None
) -> None:
    import docker
    from providers.docker import DockerProvider

    client = docker.DockerClient(base_url=f"unix://{engine.server_address}", version="1.44")
    provider = DockerProvider(client=client, root=tmp_path / "sandboxes", check_image=False)
    with pytest.raises(error, match=f"refused with {engine.status} on purpose") as raised:
        await provider.create(SandboxSpec(env="toy_terminal"))
    assert engine.requests == ["POST /v1.44/containers/create"]  # one try: retrying is the pool's call
    assert not list((tmp_path / "sandboxes").iterdir())  # its token directory went with it
    if delay_s is None:
        assert isinstance(raised.value, FatalProviderError)
    else:
        assert not isinstance(raised.value, FatalProviderError) and raised.value.delay_s == delay_s
    await provider.close()
