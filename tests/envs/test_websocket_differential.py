"""Our frame reader against wsproto's, on the same bytes.

`envs/wire/websocket.py` frames by hand because wsproto cost a third to a half of the step rate
(see its docstring). This holds it to the maintained library's verdict instead: thousands of
generated frame streams, valid ones and ones with one rule broken, are fed to both readers in
the same random pieces; both must accept with the same messages or both refuse, with the same
close code.
"""

from __future__ import annotations

import random

import pytest
from wire import BINARY, CLOSE, CONTINUATION, PING, PONG, TEXT, frame
from wsproto.frame_protocol import FrameProtocol, Opcode, ParseFailed

from envs.wire import websocket as ws

STREAMS = 1500
LIMIT = 1 << 20


def _payload(rng: random.Random, opcode: int) -> bytes:
    n = rng.choice([0, 1, 3, 125, 126, 127, 1000, 65535, 65536, 70000]) if rng.random() < 0.2 else rng.randrange(60)
    if opcode == TEXT:
        text = "".join(rng.choice('aé€😀{}"') for _ in range(n // 2))
        return text.encode()
    return rng.randbytes(n)


def _message(rng: random.Random, masked: bool) -> list[bytes]:
    """One data message, maybe fragmented, with control frames between its fragments."""
    opcode = rng.choice([TEXT, BINARY])
    data = _payload(rng, opcode)
    cuts = sorted(rng.sample(range(len(data) + 1), min(len(data) + 1, rng.choice([1, 1, 2, 3]))))
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)] or [b""]
    frames = []
    for i, piece in enumerate(pieces):
        frames.append(frame(opcode if i == 0 else CONTINUATION, piece, fin=i == len(pieces) - 1, mask=masked))
        if rng.random() < 0.2:
            frames.append(frame(rng.choice([PING, PONG]), rng.randbytes(rng.randrange(126)), mask=masked))
    return frames


def _broken(rng: random.Random, masked: bool) -> bytes:
    """A frame that breaks exactly one rule of RFC 6455."""
    payload = rng.randbytes(rng.randrange(1, 40))
    choices = [
        lambda: frame(TEXT, payload, mask=not masked),  # masking the wrong way round
        lambda: frame(BINARY, payload, mask=masked, rsv=rng.randrange(1, 8)),
        lambda: frame(PING, rng.randbytes(rng.randrange(126, 300)), mask=masked),
        lambda: frame(rng.choice([PING, PONG]), payload, fin=False, mask=masked),
        lambda: frame(CONTINUATION, payload, mask=masked),
        lambda: frame(TEXT, b"{", fin=False, mask=masked) + frame(BINARY, payload, mask=masked),
        lambda: frame(rng.choice([0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF]), payload, mask=masked),
        lambda: frame(TEXT, b"ok \xff\xfe" + payload, mask=masked),  # text that is not UTF-8
        lambda: frame(TEXT, "é".encode()[:1], mask=masked),  # a character cut short
        lambda: _long_form(payload, masked, 126),
        lambda: _long_form(payload, masked, 127),
    ]
    return rng.choice(choices)()


def _long_form(payload: bytes, masked: bool, marker: int) -> bytes:
    """A length in a longer form than it needs (RFC 6455 5.2: the minimal form MUST be used)."""
    size = 2 if marker == 126 else 8
    head = bytes([0x80 | BINARY, (0x80 if masked else 0) | marker]) + len(payload).to_bytes(size, "big")
    return head + (b"\x00" * 4 if masked else b"") + payload  # a zero mask key leaves the payload as is


def _stream(rng: random.Random, masked: bool) -> bytes:
    """A few messages; maybe one broken frame between two of them (one fault per stream: two
    could be found in either order), or a close frame at the end."""
    messages = [b"".join(_message(rng, masked)) for _ in range(rng.randrange(1, 5))]
    if rng.random() < 0.5:
        messages.insert(rng.randrange(len(messages) + 1), _broken(rng, masked))
    elif rng.random() < 0.3:
        code = rng.choice([1000, 1001, 1008, 1011, 3000, 4999])
        messages.append(frame(CLOSE, code.to_bytes(2, "big") + "bye é".encode(), mask=masked))
    return b"".join(messages)


def _pieces(rng: random.Random, data: bytes) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randrange(6)))) if len(data) > 1 else []
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def _ours(pieces: list[bytes], masked: bool) -> tuple[list[tuple[int, bytes]], int | None]:
    reader = ws.FrameReader(max_message_bytes=LIMIT, expect_masked=masked)
    out: list[tuple[int, bytes]] = []
    try:
        for piece in pieces:
            out += reader.feed(piece)
    except ws.FrameError as e:
        return out, e.close_code
    return out, None


def _wsproto(pieces: list[bytes], masked: bool) -> tuple[list[tuple[int, bytes]], int | None]:
    protocol = FrameProtocol(client=not masked, extensions=[])
    out: list[tuple[int, bytes]] = []
    chunks: list[bytes] = []
    try:
        for piece in pieces:
            protocol.receive_bytes(piece)
            for f in protocol.received_frames():
                if f.opcode is Opcode.CLOSE:
                    code, reason = f.payload
                    out.append((CLOSE, code.to_bytes(2, "big") + reason.encode()))
                elif f.opcode.iscontrol():
                    out.append((f.opcode.value, bytes(f.payload)))
                else:
                    chunks.append(f.payload.encode() if isinstance(f.payload, str) else bytes(f.payload))
                    if f.message_finished:
                        out.append((f.opcode.value, b"".join(chunks)))
                        chunks = []
    except ParseFailed as e:
        return out, int(e.code)
    return out, None


@pytest.mark.parametrize("masked", [True, False], ids=["server side (masked)", "client side (unmasked)"])
def test_our_reader_agrees_with_wsproto(masked):
    rng = random.Random(6455 + masked)
    verdicts = {"accepted": 0, "refused": 0}
    for i in range(STREAMS):
        data = _stream(rng, masked)
        pieces = _pieces(rng, data)
        (ours, our_code), (theirs, their_code) = _ours(pieces, masked), _wsproto(pieces, masked)
        assert our_code == their_code, f"stream {i}: we closed with {our_code}, wsproto with {their_code}"
        if our_code is None:
            assert ours == theirs, f"stream {i}: the messages differ"
        verdicts["accepted" if our_code is None else "refused"] += 1
    assert min(verdicts.values()) > STREAMS // 5, verdicts  # both kinds of stream were tried, many times
