"""HTTP/1.1 for the env server's routes, the WebSocket handshake and the HTTP clients, sans I/O.

llhttp (Node's parser, through httptools) parses requests and responses; this module adds
the limits of ours (head size, body size, request bodies by Content-Length only) and renders
the few replies the server writes. The headers our protocol adds to HTTP are named here, where
the server and the clients both read them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httptools

MAX_HEAD_BYTES = 16 * 1024

AUTHORIZATION = "Authorization"
ENV_TOKEN_HEADER = "Hillclimb-Env-Token"
"""Where the env server's token goes when `Authorization` belongs to the platform in front."""
SESSION_HEADER = "Hillclimb-Session"
"""Names the HTTP binding's session: returned by POST /reset, sent with every later request."""

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
    target: str  # as sent: path and query
    path: str
    headers: dict[str, str]
    keep_alive: bool = True
    body: bytes = b""

    @property
    def content_length(self) -> int:
        return int(self.headers.get("content-length", "0"))  # llhttp has checked it is digits


class _HeadLimit:
    """A message head's size, past `limit` a 431: the bytes llhttp reports, and the reads that
    ended inside a head. The latter because llhttp holds a header field that has not ended
    yet: a never-ending header costs at most the limit plus one read."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = False
        self.heads = 0  # heads begun so far: tells whether a read ended inside the same one
        self._parsed = self._streamed = 0

    def begin(self) -> None:
        self.open, self._parsed, self._streamed = True, 0, 0
        self.heads += 1

    def end(self) -> None:
        self.open = False

    def parsed(self, n: int) -> None:
        self._parsed += n
        self._check(self._parsed)

    def streamed(self, n: int) -> None:
        """A whole read fed while a head was open, that did not end it."""
        self._streamed += n
        self._check(self._streamed)

    def _check(self, size: int) -> None:
        if size > self.limit:
            raise HTTPError(431, f"message head exceeds {self.limit} bytes")


class _Reader:
    """What both readers share: llhttp fed, its errors made ours, the head limit, the headers,
    and the bytes that follow a message asking for an upgrade (llhttp stops there)."""

    def __init__(self, parser: Any, *, max_head_bytes: int, what: str) -> None:
        self._parser = parser
        self._head = _HeadLimit(max_head_bytes)
        self._what = what
        self.headers: dict[str, str] = {}
        self.upgraded: bytes | None = None

    def _feed(self, data: bytes) -> None:
        open_head = self._head.heads if self._head.open else None
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            self.upgraded = data[e.args[0] :]
        except httptools.HttpParserCallbackError as e:
            if isinstance(e.__context__, HTTPError):  # raised by one of ours: llhttp wraps it
                raise e.__context__ from None
            raise
        except httptools.HttpParserError as e:
            raise HTTPError(400, f"malformed {self._what}: {e}") from None
        if self._head.open and self._head.heads == open_head:
            self._head.streamed(len(data))

    def on_message_begin(self) -> None:
        self._head.begin()
        self.headers = {}

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head.parsed(len(name) + len(value) + 4)
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")


class RequestReader(_Reader):
    """Requests out of one connection's bytes, in order (pipelining included).

    `on_head` judges each request by its head, before any of its body is read or held: it
    raises `HTTPError` to refuse. After a request that asks for a protocol upgrade, llhttp
    stops: `upgraded` holds the bytes that followed it (the new protocol's, or nothing).
    """

    def __init__(self, on_head: Callable[[Request], None], *, max_body_bytes: int) -> None:
        super().__init__(httptools.HttpRequestParser(self), max_head_bytes=MAX_HEAD_BYTES, what="request")
        self._on_head = on_head
        self._max_body = max_body_bytes
        self._url = b""
        self._body: list[bytes] = []
        self._request: Request | None = None
        self._ready: list[Request] = []

    def feed(self, data: bytes) -> list[Request]:
        if self.upgraded is not None:
            self.upgraded += data
            return []
        self._feed(data)
        ready, self._ready = self._ready, []
        return ready

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._url, self._body = b"", []

    def on_url(self, url: bytes) -> None:
        self._head.parsed(len(url))
        self._url += url

    def on_headers_complete(self) -> None:
        self._head.end()
        version = self._parser.get_http_version()
        if version not in ("1.0", "1.1"):
            raise HTTPError(400, f"unsupported HTTP version {version}")
        target = self._url.decode("latin-1")
        keep_alive = self._parser.should_keep_alive() and not self._parser.should_upgrade()
        method = self._parser.get_method().decode("ascii")
        request = Request(method, target, urlsplit(target).path or "/", self.headers, keep_alive)
        if "transfer-encoding" in self.headers:
            raise HTTPError(411, "chunked request bodies are not supported: send Content-Length")
        if request.content_length > self._max_body:
            raise HTTPError(413, f"body exceeds {self._max_body} bytes")
        self._on_head(request)
        self._request = request

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        request, self._request = self._request, None
        assert request is not None
        request.body = b"".join(self._body)
        self._ready.append(request)


@dataclass(slots=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


class ResponseReader(_Reader):
    """Responses out of one connection's bytes, one after another (a kept-alive connection
    reads all of its replies through one reader).

    `feed` returns the responses its bytes completed; one whose body ends with the connection
    is whole at `finish()`. After a 101, `upgraded` holds the bytes that followed its head.
    """

    def __init__(self, *, max_head_bytes: int, max_body_bytes: int) -> None:
        super().__init__(httptools.HttpResponseParser(self), max_head_bytes=max_head_bytes, what="response")
        self._max_body = max_body_bytes
        self._body: list[bytes] = []
        self._body_size = 0
        self._status = 0
        self._keep_alive = False  # llhttp forgets it once the message is complete
        self._whole: list[Response] = []

    def feed(self, data: bytes) -> list[Response]:
        self._feed(data)
        whole, self._whole = self._whole, []
        return whole

    def finish(self) -> Response | None:
        """The connection ended: the response now arriving, if its body was to end with it."""
        delimited = "content-length" in self.headers or "transfer-encoding" in self.headers
        if self._status and not self._head.open and not delimited:
            return Response(self._status, self.headers, b"".join(self._body), False)
        return None

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._body, self._body_size, self._status = [], 0, 0

    def on_headers_complete(self) -> None:
        self._head.end()
        self._status = self._parser.get_status_code()
        self._keep_alive = self._parser.should_keep_alive() and not self._parser.should_upgrade()
        length = self.headers.get("content-length")
        if length is not None and int(length) > self._max_body:
            raise HTTPError(413, f"a {length}-byte reply, over this client's limit of {self._max_body}")

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._max_body:
            raise HTTPError(413, f"a reply over this client's limit of {self._max_body} bytes")
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._whole.append(Response(self._status, self.headers, b"".join(self._body), self._keep_alive))
        self._status = 0


def render_response(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}"]
    all_headers = {"Content-Length": str(len(body))} if status != 101 else {}
    all_headers.update(headers or {})
    lines += [f"{k}: {v}" for k, v in all_headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> bytes:
    body = json.dumps(payload).encode()
    return render_response(status, body, {"Content-Type": "application/json"} | (headers or {}))
