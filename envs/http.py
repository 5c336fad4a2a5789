"""Just enough HTTP/1.1 for the env server's routes and the WebSocket handshake, sans I/O."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

MAX_HEAD_BYTES = 16 * 1024

REASONS = {
    101: "Switching Protocols",
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Content Too Large",
    426: "Upgrade Required",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
}


class HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes = b""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def content_length(self) -> int:
        if "transfer-encoding" in self.headers:  # else a chunked body would be read as the next request
            raise HTTPError(411, "chunked request bodies are not supported: send Content-Length")
        raw = self.headers.get("content-length", "0")
        if not (raw.isascii() and raw.isdigit()):  # str.isdigit() alone accepts "²", which int() rejects
            raise HTTPError(400, f"bad Content-Length {raw!r}")
        return int(raw)

    @property
    def keep_alive(self) -> bool:
        return self.headers.get("connection", "").lower() != "close"


def split_head(buf: bytearray) -> bytes | None:
    """Remove and return one request or response head (without the blank line), if complete."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > MAX_HEAD_BYTES:
            raise HTTPError(431, f"request head exceeds {MAX_HEAD_BYTES} bytes")
        return None
    if end > MAX_HEAD_BYTES:
        raise HTTPError(431, f"request head exceeds {MAX_HEAD_BYTES} bytes")
    head = bytes(buf[:end])
    del buf[: end + 4]
    return head


def _parse_headers(lines: list[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HTTPError(400, f"malformed header line {line[:80]!r}")
        headers[name.lower()] = value.strip()
    return headers


def parse_request_head(head: bytes) -> Request:
    try:
        text = head.decode("latin-1")
        request_line, *header_lines = text.split("\r\n")
        method, target, version = request_line.split(" ")
    except ValueError:
        raise HTTPError(400, "malformed request line") from None
    if not version.startswith("HTTP/1."):
        raise HTTPError(400, f"unsupported HTTP version {version!r}")
    url = urlsplit(target)
    return Request(method, url.path or "/", dict(parse_qsl(url.query)), _parse_headers(header_lines))


def parse_response_head(head: bytes) -> tuple[int, dict[str, str]]:
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise HTTPError(502, f"malformed status line {status_line[:80]!r}")
    return int(parts[1]), _parse_headers(header_lines)


def render_response(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}"]
    all_headers = {"Content-Length": str(len(body))} if status != 101 else {}
    all_headers.update(headers or {})
    lines += [f"{k}: {v}" for k, v in all_headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> bytes:
    body = json.dumps(payload).encode()
    return render_response(status, body, {"Content-Type": "application/json", **(headers or {})})
