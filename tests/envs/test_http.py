"""The HTTP readers over llhttp: requests split anywhere, pipelined, upgraded; the limits of ours
(head size, also for a header that never ends; body size); replies by Content-Length, chunks or
connection close."""

from __future__ import annotations

import pytest

from envs.wire import http

PIPELINED = (
    b"GET /health?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"
    b"POST /mcp HTTP/1.1\r\nContent-Length: 5\r\nX-Case: MiXeD\r\n\r\nhello"
    b"GET /metadata HTTP/1.0\r\n\r\n"
)


def _reader(limit: int = 1024, seen: list[str] | None = None) -> http.RequestReader:
    return http.RequestReader(lambda request: (seen or []).append(request.path), max_body_bytes=limit)


@pytest.mark.parametrize("step", [1, 7, 50, len(PIPELINED)])
def test_pipelined_requests_come_out_whole_and_in_order_however_split(step):
    reader = _reader()
    requests = [r for i in range(0, len(PIPELINED), step) for r in reader.feed(PIPELINED[i : i + step])]
    assert [(r.method, r.target, r.path, r.body, r.keep_alive) for r in requests] == [
        ("GET", "/health?x=1", "/health", b"", True),
        ("POST", "/mcp", "/mcp", b"hello", True),
        ("GET", "/metadata", "/metadata", b"", False),  # HTTP/1.0 closes unless asked not to
    ]
    assert requests[1].headers["x-case"] == "MiXeD" and requests[1].content_length == 5


def test_a_head_is_judged_before_its_body_arrives():
    def refuse(request: http.Request) -> None:
        raise http.HTTPError(401, f"no token for {request.path}")

    reader = http.RequestReader(refuse, max_body_bytes=1 << 20)
    with pytest.raises(http.HTTPError) as e:
        reader.feed(b"POST /mcp HTTP/1.1\r\nContent-Length: 100000\r\n\r\n")  # no body sent
    assert (e.value.status, e.value.message) == (401, "no token for /mcp")


def test_a_header_that_never_ends_is_refused_within_a_read_of_the_limit():
    reader = _reader()
    reader.feed(b"GET / HTTP/1.1\r\nX-Pad: ")
    fed = 0
    with pytest.raises(http.HTTPError) as e:
        while True:
            reader.feed(b"a" * 1000)
            fed += 1000
    assert e.value.status == 431 and fed <= http.MAX_HEAD_BYTES


def test_a_head_just_under_the_limit_in_many_reads_is_taken():
    head = b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 90) for i in range(150)) + b"\r\n"
    assert len(head) < http.MAX_HEAD_BYTES
    reader = _reader()
    requests = [r for i in range(0, len(head), 999) for r in reader.feed(head[i : i + 999])]
    assert len(requests) == 1 and len(requests[0].headers) == 150


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"POST /mcp HTTP/1.1\r\nContent-Length: 2000\r\n\r\n", 413),
        (b"POST /mcp HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 411),
        (b"POST /mcp HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"POST /mcp HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),  # smuggling
        (b"GET / HTTP/1.1\nHost: a\n\n", 400),  # bare LF
        (b"GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n", 400),  # obsolete line folding
        (b"GET / HTTP/1.1\r\nA: b\x00c\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\n\r\n", 400),
    ],
    ids=["body too big", "chunked", "two lengths", "length and chunked", "bare LF", "folding", "NUL", "HTTP/2"],
)
def test_bad_requests_are_typed_errors(raw, status):
    with pytest.raises(http.HTTPError) as e:
        _reader().feed(raw)
    assert e.value.status == status


def test_after_an_upgrade_the_rest_is_the_new_protocols():
    reader = _reader()
    head = b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    [request] = reader.feed(head + b"\x81\x85frame")
    assert request.path == "/ws" and not request.keep_alive
    assert reader.feed(b"more") == [] and reader.upgraded == b"\x81\x85framemore"


def _reply(raw: bytes, step: int, *, limit: int = 1024) -> tuple[http.ResponseReader, list[http.Response]]:
    reader = http.ResponseReader(max_head_bytes=http.MAX_HEAD_BYTES, max_body_bytes=limit)
    replies = [r for i in range(0, len(raw), step) for r in reader.feed(raw[i : i + step])]
    return reader, replies


@pytest.mark.parametrize("step", [1, 5, 1000])
def test_replies_by_length_by_chunks_and_to_the_close_through_one_reader(step):
    by_length = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"
    chunked = b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n1\r\nc\r\n0\r\n\r\n"
    to_the_close = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nxyz"
    reader, replies = _reply(by_length + chunked + to_the_close, step)
    assert [(r.status, r.body, r.keep_alive) for r in replies] == [(200, b"abc", True), (201, b"abc", True)]
    last = reader.finish()
    assert last is not None and (last.status, last.body, last.keep_alive) == (200, b"xyz", False)


def test_a_body_cut_short_is_never_whole():
    reader, replies = _reply(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc", 1000)
    assert replies == [] and reader.finish() is None


def test_a_101_hands_over_what_follows_it():
    head = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    reader, [reply] = _reply(head + b"\x81\x02{}", 1000)
    assert reply.status == 101 and not reply.keep_alive and reader.upgraded == b"\x81\x02{}"


@pytest.mark.parametrize(
    "raw",
    [b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 5000],
    ids=["declared", "to the close"],
)
def test_a_reply_over_the_limit_is_refused(raw):
    with pytest.raises(http.HTTPError, match="limit of 1024"):
        _reply(raw, 1000)
