"""RFC 6455 framing: the sans-I/O reader and writer against an independent encoder (`wire.frame`),
then the same rules over real sockets, where a rule-breaking client loses its own connection
with the right close code while the other sessions on the server keep working."""

from __future__ import annotations

import json
import os

import pytest
from sample_envs import CounterEnv
from wire import BINARY, CLOSE, CONTINUATION, PING, PONG, TEXT, RawWS, frame, read_frame

from envs.wire import websocket as ws

LENGTH_BOUNDARIES = [0, 1, 125, 126, 127, 65535, 65536, 70000]


def _header_len(n: int, masked: bool) -> int:
    # RFC 6455 5.2: 7-bit length up to 125, then 16-bit up to 65535, then 64-bit; +4 for the mask key.
    return (2 if n < 126 else 4 if n < 65536 else 10) + (4 if masked else 0)


def test_accept_key_is_the_rfc_example():
    assert ws.accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize("n", [0, 1, 3, 4, 5, 8, 127, 1000])
def test_apply_mask_is_bytewise_xor(n):
    payload, key = os.urandom(n), os.urandom(4)
    expected = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    assert ws.apply_mask(payload, key) == expected
    assert ws.apply_mask(expected, key) == payload


@pytest.mark.parametrize("masked", [True, False], ids=["masked", "unmasked"])
@pytest.mark.parametrize("n", LENGTH_BOUNDARIES)
def test_encode_frame_matches_the_rfc_layout(n, masked):
    payload = os.urandom(n)
    data = ws.encode_frame(ws.OP_BINARY, payload, mask=masked)
    head = _header_len(n, masked)
    assert len(data) == head + n
    assert data[0] == 0x80 | ws.OP_BINARY
    assert bool(data[1] & 0x80) is masked
    if n < 126:
        assert data[1] & 0x7F == n
    elif n < 65536:
        assert data[1] & 0x7F == 126 and int.from_bytes(data[2:4], "big") == n
    else:
        assert data[1] & 0x7F == 127 and int.from_bytes(data[2:10], "big") == n
    body = data[head:]
    assert (ws.apply_mask(body, data[head - 4 : head]) if masked else body) == payload


@pytest.mark.parametrize("masked", [True, False], ids=["masked", "unmasked"])
@pytest.mark.parametrize("n", LENGTH_BOUNDARIES)
def test_reader_round_trips_at_length_boundaries(n, masked):
    payload = os.urandom(n)
    data = frame(BINARY, payload, mask=masked) + frame(TEXT, b"next", mask=masked)
    reader = ws.FrameReader(max_message_bytes=1 << 20, expect_masked=masked)
    # Cut inside the extended length, inside the mask key and inside the payload.
    cuts = sorted({0, 1, 3, min(7, len(data)), len(data) // 2, len(data) - 1, len(data)})
    out = []
    for a, b in zip(cuts, cuts[1:], strict=False):
        out += reader.feed(data[a:b])
    assert out == [(ws.OP_BINARY, payload), (ws.OP_TEXT, b"next")]


def test_reader_takes_one_byte_at_a_time():
    data = frame(TEXT, b"x" * 300) + frame(PING, b"hi")
    reader = ws.FrameReader(max_message_bytes=1024, expect_masked=True)
    out = [m for i in range(len(data)) for m in reader.feed(data[i : i + 1])]
    assert out == [(ws.OP_TEXT, b"x" * 300), (ws.OP_PING, b"hi")]


def test_fragments_reassemble_with_control_frames_between_them():
    data = (
        frame(TEXT, b"he", fin=False)
        + frame(PING, b"p1")
        + frame(CONTINUATION, b"ll", fin=False)
        + frame(PONG, b"")
        + frame(CONTINUATION, b"o", fin=True)
        + frame(BINARY, b"\x00\x01", fin=False)
        + frame(CONTINUATION, b"\x02", fin=True)
    )
    reader = ws.FrameReader(max_message_bytes=1024, expect_masked=True)
    expected = [(ws.OP_PING, b"p1"), (ws.OP_PONG, b""), (ws.OP_TEXT, b"hello"), (ws.OP_BINARY, b"\x00\x01\x02")]
    assert reader.feed(data) == expected


def test_oversized_message_is_reported_once_and_skipped():
    reader = ws.FrameReader(max_message_bytes=1024, expect_masked=True)
    data = frame(TEXT, b"a" * 5000) + frame(TEXT, b"after")
    out = [m for i in range(0, len(data), 700) for m in reader.feed(data[i : i + 700])]
    assert out == [(ws.OVERSIZED, b"5000"), (ws.OP_TEXT, b"after")]


def test_oversized_fragmented_message_is_reported_once_and_skipped():
    reader = ws.FrameReader(max_message_bytes=1024, expect_masked=True)
    data = (
        frame(TEXT, b"a" * 600, fin=False)
        + frame(CONTINUATION, b"b" * 600, fin=False)  # 1200 > 1024: reported here
        + frame(PING, b"still")  # control frames between skipped fragments still count
        + frame(CONTINUATION, b"c" * 600, fin=True)
        + frame(TEXT, b"after")
    )
    assert reader.feed(data) == [(ws.OVERSIZED, b"1200"), (ws.OP_PING, b"still"), (ws.OP_TEXT, b"after")]


def test_oversized_first_fragment_skips_its_continuations():
    reader = ws.FrameReader(max_message_bytes=1024, expect_masked=True)
    data = frame(BINARY, b"a" * 2000, fin=False) + frame(CONTINUATION, b"b" * 10) + frame(TEXT, b"ok")
    assert reader.feed(data) == [(ws.OVERSIZED, b"2000"), (ws.OP_TEXT, b"ok")]


VIOLATIONS = {
    "unmasked client frame": frame(TEXT, b"{}", mask=False),
    "reserved bits": frame(TEXT, b"{}", rsv=0b100),
    "oversized control frame": frame(PING, b"p" * 126),
    "fragmented control frame": frame(PING, b"p", fin=False),
    "continuation without start": frame(CONTINUATION, b"{}"),
    "data frame inside a fragmented message": frame(TEXT, b"{", fin=False) + frame(TEXT, b"}"),
    "unknown opcode": frame(0x3, b"{}"),
    "64-bit length with the top bit set": bytes([0x81, 0x80 | 127]) + (1 << 63).to_bytes(8, "big") + b"mask",
    "16-bit length that fits in 7 bits": bytes([0x81, 0x80 | 126]) + (5).to_bytes(2, "big") + b"mask" + b"hello",
    "64-bit length that fits in 16 bits": bytes([0x81, 0x80 | 127]) + (5).to_bytes(8, "big") + b"mask" + b"hello",
}


@pytest.mark.parametrize("data", VIOLATIONS.values(), ids=VIOLATIONS.keys())
def test_reader_rejects_protocol_violations(data):
    reader = ws.FrameReader(max_message_bytes=1024, expect_masked=True)
    with pytest.raises(ws.FrameError) as e:
        reader.feed(data)
    assert e.value.close_code == ws.CLOSE_PROTOCOL_ERROR


def test_text_that_is_not_utf8_fails_the_connection_binary_does_not():
    reader = ws.FrameReader(max_message_bytes=1024, expect_masked=True)
    assert reader.feed(frame(BINARY, b"\xff\xfe{")) == [(ws.OP_BINARY, b"\xff\xfe{")]
    with pytest.raises(ws.FrameError) as e:
        reader.feed(frame(TEXT, "é".encode()[:1], fin=False) + frame(CONTINUATION, b"x"))  # a character cut short
    assert e.value.close_code == ws.CLOSE_INVALID_PAYLOAD


def test_client_side_reader_rejects_masked_server_frames():
    reader = ws.FrameReader(max_message_bytes=1024, expect_masked=False)
    with pytest.raises(ws.FrameError, match="must not be masked"):
        reader.feed(frame(TEXT, b"{}", mask=True))


def test_close_payload_round_trips_and_stays_valid_utf8():
    assert ws.parse_close_payload(ws.close_payload(1001, "idle timeout")) == (1001, "idle timeout")
    assert ws.parse_close_payload(b"") == (1005, "")
    long = ws.close_payload(1011, "é" * 200)  # 400 bytes of UTF-8: truncated to fit a control frame
    assert len(long) <= 125
    long[2:].decode("utf-8")  # never cut through a character


# -- over real sockets ------------------------------------------------------------


@pytest.mark.parametrize("data", VIOLATIONS.values(), ids=VIOLATIONS.keys())
async def test_violation_closes_that_connection_only(start_server, calls, data):
    served = await start_server(CounterEnv)
    good, bad = await RawWS.open(served.url), await RawWS.open(served.url)
    try:
        assert (await good.request({"type": "reset", "data": {"start": 3}}))["type"] == "observation"
        assert (await bad.request({"type": "reset", "data": {}}))["type"] == "observation"
        bad.writer.write(data)
        assert await bad.close_code() == ws.CLOSE_PROTOCOL_ERROR
        reply = await good.request({"type": "step", "data": {"amount": 2}})
        assert reply["data"]["observation"]["total"] == 5
    finally:
        await good.aclose()
        await bad.aclose()


@pytest.mark.parametrize("n", [125, 126, 65535, 65536])
async def test_client_messages_at_length_boundaries(start_server, n):
    served = await start_server(CounterEnv)
    raw = await RawWS.open(served.url)
    try:
        message = json.dumps({"type": "step", "data": {"amount": 1}})
        raw.send(TEXT, (message + " " * (n - len(message))).encode())  # JSON allows trailing whitespace
        assert (await raw.recv_json())["data"]["observation"]["total"] == 1
    finally:
        await raw.aclose()


@pytest.mark.parametrize("n", [125, 126, 65535, 65536])
async def test_server_replies_at_length_boundaries(start_server, n):
    """The server encodes replies of exactly n bytes per the RFC, and our client decodes them."""
    served = await start_server(CounterEnv)
    raw = await RawWS.open(served.url)
    try:
        raw.send_json({"type": "step", "data": {"op": "big", "amount": 1}})
        _, payload = await raw.recv()
        overhead = len(payload) - 1  # every byte but the note's one "x"
        raw.send_json({"type": "step", "data": {"op": "big", "amount": n - overhead}})
        opcode, payload = await raw.recv()
        assert opcode == TEXT and len(payload) == n
        assert json.loads(payload)["data"]["observation"]["note"] == "x" * (n - overhead)
    finally:
        await raw.aclose()
    async with served.client() as client:
        await client.step({"op": "big", "amount": 1})
        result = await client.step({"op": "big", "amount": n - overhead})
        assert result.observation["note"] == "x" * (n - overhead)


async def test_fragmented_message_with_ping_between_fragments(start_server):
    served = await start_server(CounterEnv)
    raw = await RawWS.open(served.url)
    try:
        text = json.dumps({"type": "step", "data": {"amount": 4}}).encode()
        raw.send(TEXT, text[:5], fin=False)
        raw.send(PING, b"mid-message")
        raw.send(CONTINUATION, text[5:12], fin=False)
        raw.send(CONTINUATION, text[12:], fin=True)
        _, opcode, payload = await read_frame(raw.reader)
        assert (opcode, payload) == (PONG, b"mid-message")
        assert (await raw.recv_json())["data"]["observation"]["total"] == 4
    finally:
        await raw.aclose()


@pytest.mark.parametrize("fragmented", [False, True], ids=["single-frame", "fragmented"])
async def test_oversized_message_gets_validation_error_and_session_continues(start_server, fragmented):
    served = await start_server(CounterEnv, max_message_bytes=1024)
    raw = await RawWS.open(served.url)
    try:
        assert (await raw.request({"type": "step", "data": {"amount": 2}}))["data"]["observation"]["total"] == 2
        big = json.dumps({"type": "step", "data": {"amount": 1, "metadata": {"pad": "x" * 3000}}}).encode()
        if fragmented:
            raw.send(TEXT, big[:1000], fin=False)
            raw.send(CONTINUATION, big[1000:2000], fin=False)
            raw.send(CONTINUATION, big[2000:], fin=True)
        else:
            raw.send(TEXT, big)
        error = await raw.recv_json()
        assert error["type"] == "error" and error["data"]["code"] == "VALIDATION_ERROR"
        assert "1024" in error["data"]["message"]
        # Same session: the total carries on from 2, and exactly one error was sent.
        assert (await raw.request({"type": "step", "data": {"amount": 1}}))["data"]["observation"]["total"] == 3
    finally:
        await raw.aclose()


async def test_client_close_frame_is_answered(start_server, calls):
    served = await start_server(CounterEnv)
    raw = await RawWS.open(served.url)
    try:
        raw.send(CLOSE, ws.close_payload(ws.CLOSE_NORMAL))
        assert await raw.close_code() == ws.CLOSE_NORMAL
    finally:
        await raw.aclose()
