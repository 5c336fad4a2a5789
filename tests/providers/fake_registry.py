"""A container registry on loopback that takes pushes: the part of the Distribution API a Docker
engine uses to push an image (https://distribution.github.io/distribution/spec/api/), over plain
HTTP (an engine trusts 127.0.0.0/8 as an insecure registry by default), keeping every blob and
manifest it is sent so a test can read back what arrived.

    GET  /v2/                                  200, or 401 when `refuse_auth`
    HEAD /v2/<name>/blobs/<digest>             200 if held, else 404
    POST /v2/<name>/blobs/uploads/             202, Location of a new upload
    PATCH <upload>                             202, the chunk appended
    PUT  <upload>?digest=<digest>              201, the blob stored under its checked digest
    PUT  /v2/<name>/manifests/<tag>            201, Docker-Content-Digest: the manifest's digest
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

API_VERSION = {"Docker-Distribution-API-Version": "registry/2.0"}


class FakeRegistry:
    def __init__(self, refuse_auth: bool = False) -> None:
        self.refuse_auth = refuse_auth
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[tuple[str, str], bytes] = {}
        """(repository, tag) → the manifest pushed."""
        self.uploads: dict[str, bytearray] = {}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.address = f"127.0.0.1:{self.server.server_port}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="fake-registry", daemon=True)

    def __enter__(self) -> FakeRegistry:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()

    def image_config(self, repository: str, tag: str) -> dict[str, Any]:
        """The config blob (labels included) of the manifest pushed as `repository:tag`."""
        manifest = json.loads(self.manifests[(repository, tag)])
        return json.loads(self.blobs[manifest["config"]["digest"]])


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _handler(registry: FakeRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet: the test reads the registry instead
            pass

        def do_GET(self) -> None:
            if urlsplit(self.path).path != "/v2/":
                return self._answer(404)
            if registry.refuse_auth:
                return self._answer(401, {"WWW-Authenticate": 'Basic realm="fake-registry"'}, _error("UNAUTHORIZED"))
            self._answer(200, body=b"{}")

        def do_HEAD(self) -> None:
            found = re.fullmatch(r"/v2/.+/blobs/(sha256:[0-9a-f]{64})", urlsplit(self.path).path)
            blob = registry.blobs.get(found.group(1)) if found else None
            if blob is None:
                return self._answer(404, head=True)
            headers = {"Docker-Content-Digest": found.group(1), "Content-Length": str(len(blob))}  # type: ignore[union-attr]
            self._answer(200, headers, head=True)

        def do_POST(self) -> None:
            self._read_body()
            found = re.fullmatch(r"/v2/(.+)/blobs/uploads/", urlsplit(self.path).path)
            if found is None:
                return self._answer(404)
            upload = uuid.uuid4().hex
            registry.uploads[upload] = bytearray()
            self._answer(202, self._upload_headers(found.group(1), upload))

        def do_PATCH(self) -> None:
            name, upload = self._upload()
            registry.uploads[upload] += self._read_body()
            self._answer(202, self._upload_headers(name, upload))

        def do_PUT(self) -> None:
            parts = urlsplit(self.path)
            body = self._read_body()
            manifest = re.fullmatch(r"/v2/(.+)/manifests/([^/]+)", parts.path)
            if manifest is not None:
                registry.manifests[(manifest.group(1), manifest.group(2))] = body
                digest = _digest(body)
                return self._answer(201, {"Docker-Content-Digest": digest, "Location": parts.path})
            name, upload = self._upload()
            data = bytes(registry.uploads.pop(upload) + body)
            digest = parse_qs(parts.query)["digest"][0]
            if _digest(data) != digest:
                return self._answer(400, body=_error("DIGEST_INVALID"))
            registry.blobs[digest] = data
            self._answer(201, {"Docker-Content-Digest": digest, "Location": f"/v2/{name}/blobs/{digest}"})

        def _upload(self) -> tuple[str, str]:
            found = re.fullmatch(r"/v2/(.+)/blobs/uploads/([0-9a-f]+)", urlsplit(self.path).path)
            assert found is not None and found.group(2) in registry.uploads, self.path
            return found.group(1), found.group(2)

        def _upload_headers(self, name: str, upload: str) -> dict[str, str]:
            size = len(registry.uploads[upload])
            return {
                "Location": f"/v2/{name}/blobs/uploads/{upload}",
                "Docker-Upload-UUID": upload,
                "Range": f"0-{max(size - 1, 0)}",
            }

        def _read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                data = bytearray()
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    data += self.rfile.read(size)
                    self.rfile.readline()
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                return bytes(data)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _answer(
            self, status: int, headers: dict[str, str] | None = None, body: bytes = b"", head: bool = False
        ) -> None:
            self.send_response(status)
            for key, value in {**API_VERSION, **(headers or {})}.items():
                self.send_header(key, value)
            if not head:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

    return Handler


def _error(code: str) -> bytes:
    return json.dumps({"errors": [{"code": code, "message": code.lower().replace("_", " ")}]}).encode()
