"""RFC 6455 framing and the opening handshake, sans I/O.

The server and the client both run on `asyncio.Protocol` and hand raw bytes to
`FrameReader`; this module never touches a socket. It is small on purpose: a step
round trip is a handful of small frames. wsproto, the maintained sans-I/O library, did
the same job at 0.51-0.66x the step rate (`bench.regression`; README, "Parsing by libraries"),
so the framing stays here, and tests/envs/test_websocket_differential.py holds it to
wsproto's verdict on generated and mutated frame streams.

A message longer than the reader's limit is not buffered: the reader reports it once
as `OVERSIZED`, then skips its bytes, so the connection and its session survive.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from dataclasses import dataclass

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
OVERSIZED = -1
"""Pseudo-opcode: a data message exceeded the size limit; its payload is its length."""

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_PAYLOAD = 1007
CLOSE_POLICY_VIOLATION = 1008
CLOSE_INTERNAL_ERROR = 1011

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MAX_CONTROL_PAYLOAD = 125


class FrameError(Exception):
    """The peer broke the framing rules; the connection must close with `close_code`."""

    def __init__(self, message: str, close_code: int = CLOSE_PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.close_code = close_code


def accept_key(client_key: str) -> str:
    """The `Sec-WebSocket-Accept` value for a client's `Sec-WebSocket-Key`."""
    digest = hashlib.sha1(client_key.encode("ascii") + _GUID).digest()
    return base64.b64encode(digest).decode("ascii")


def new_client_key() -> str:
    return base64.b64encode(os.urandom(16)).decode("ascii")


def apply_mask(payload: bytes, mask: bytes) -> bytes:
    """XOR `payload` with the 4-byte `mask`, using one big-integer XOR instead of a byte loop."""
    n = len(payload)
    if n == 0:
        return b""
    repeated = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(repeated, "little")).to_bytes(n, "little")


def encode_frame(opcode: int, payload: bytes, *, mask: bool) -> bytes:
    """One final frame. Clients must mask (`mask=True`); servers must not."""
    n = len(payload)
    first = 0x80 | opcode
    mask_bit = 0x80 if mask else 0
    if n < 126:
        header = struct.pack("!BB", first, mask_bit | n)
    elif n < 1 << 16:
        header = struct.pack("!BBH", first, mask_bit | 126, n)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, n)
    if not mask:
        return header + payload
    key = _mask_keys.next()
    return header + key + apply_mask(payload, key)


class _MaskKeys:
    """Masking keys from os.urandom, fetched 4 KiB at a time instead of one syscall per frame."""

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def next(self) -> bytes:
        if self._at + 4 > len(self._pool):
            self._pool, self._at = os.urandom(4096), 0
        key = self._pool[self._at : self._at + 4]
        self._at += 4
        return key


_mask_keys = _MaskKeys()
os.register_at_fork(after_in_child=_mask_keys.__init__)  # a forked child must not reuse its parent's keys


def close_payload(code: int, reason: str = "") -> bytes:
    # Truncate to fit a control frame without cutting a character: peers must fail a close
    # frame whose reason is not valid UTF-8 (RFC 6455 section 8.1).
    cut = reason.encode("utf-8")[: _MAX_CONTROL_PAYLOAD - 2].decode("utf-8", "ignore")
    return struct.pack("!H", code) + cut.encode("utf-8")


def close_reply_code(code: int) -> int:
    """The code to answer a peer's close frame with: its own when that may be sent on the wire
    (RFC 6455 7.4: 1000-1003, 1007-1014, 3000-4999), 1000 when it sent none, else 1002."""
    if code == 1005:
        return CLOSE_NORMAL
    sendable = 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999
    return code if sendable else CLOSE_PROTOCOL_ERROR


def parse_close_payload(payload: bytes) -> tuple[int, str]:
    if len(payload) < 2:
        return 1005, ""
    (code,) = struct.unpack("!H", payload[:2])
    return code, payload[2:].decode("utf-8", "replace")


@dataclass(slots=True)
class _Partial:
    opcode: int
    chunks: list[bytes]
    size: int


class FrameReader:
    """Turns a byte stream into complete messages: `(opcode, payload)` pairs.

    Data messages are reassembled from fragments; control frames come out as they
    arrive, also between fragments. `expect_masked` is True on the server side.
    """

    def __init__(self, *, max_message_bytes: int, expect_masked: bool) -> None:
        self._max = max_message_bytes
        self._expect_masked = expect_masked
        self._buf = bytearray()
        self._partial: _Partial | None = None
        self._skip = 0  # bytes still to discard from an oversized message
        self._skipping_message = False  # continuation frames of that message are skipped too

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        # Scan in place: `data` itself when nothing is left over (the common case, one
        # whole small message per read), else the leftover buffer with `data` appended.
        if self._buf:
            self._buf += data
            buf: bytes | bytearray = self._buf
        else:
            buf = data
        out: list[tuple[int, bytes]] = []
        pos, size = 0, len(buf)
        while pos < size:  # (at the end, the common case, no header is left to look for)
            if self._skip:
                dropped = min(self._skip, size - pos)
                pos += dropped
                self._skip -= dropped
                if self._skip:
                    break
            frame = self._next_frame(buf, pos)
            if frame is None:
                break
            fin, opcode, payload_len, start, mask = frame
            if self._oversized(fin, opcode, payload_len):
                pos = start
                self._skip = payload_len
                if not self._skipping_message:
                    out.append((OVERSIZED, str(payload_len + self._partial_size()).encode()))
                self._skipping_message = not fin
                self._partial = None
                continue
            end = start + payload_len
            if size < end:
                break
            payload = bytes(buf[start:end])
            pos = end
            if mask is not None:
                payload = apply_mask(payload, mask)
            message = self._assemble(fin, opcode, payload)
            if message is not None:
                out.append(message)
        if buf is self._buf:
            del self._buf[:pos]
        elif pos < size:
            self._buf = bytearray(buf[pos:])
        return out

    def _partial_size(self) -> int:
        return self._partial.size if self._partial else 0

    def _next_frame(self, buf: bytes | bytearray, at: int) -> tuple[bool, int, int, int, bytes | None] | None:
        """The frame header starting at `at`: (fin, opcode, payload length, payload start, mask)."""
        available = len(buf) - at
        if available < 2:
            return None
        b0, b1 = buf[at], buf[at + 1]
        if b0 & 0x70:
            raise FrameError("reserved bits set without a negotiated extension")
        fin, opcode = bool(b0 & 0x80), b0 & 0x0F
        masked, length = bool(b1 & 0x80), b1 & 0x7F
        if masked != self._expect_masked:
            side = "client frames must be masked" if self._expect_masked else "server frames must not be masked"
            raise FrameError(side)
        pos = 2
        if length == 126:
            if available < 4:
                return None
            (length,) = struct.unpack_from("!H", buf, at + 2)
            if length < 126:
                raise FrameError("a 16-bit payload length for a length that fits in 7 bits")
            pos = 4
        elif length == 127:
            if available < 10:
                return None
            (length,) = struct.unpack_from("!Q", buf, at + 2)
            if length >> 63:
                raise FrameError("64-bit payload length with its most significant bit set")
            if length < 1 << 16:
                raise FrameError("a 64-bit payload length for a length that fits in 16 bits")
            pos = 10
        mask = None
        if masked:
            if available < pos + 4:
                return None
            mask = bytes(buf[at + pos : at + pos + 4])
            pos += 4
        if opcode >= OP_CLOSE and (length > _MAX_CONTROL_PAYLOAD or not fin):
            raise FrameError("control frames must be final and at most 125 bytes")
        if opcode not in (OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG):
            raise FrameError(f"unknown opcode {opcode:#x}")
        return fin, opcode, length, at + pos, mask

    def _oversized(self, fin: bool, opcode: int, payload_len: int) -> bool:
        if opcode >= OP_CLOSE:
            return False
        if opcode == OP_CONTINUATION and self._skipping_message:
            return True
        return self._partial_size() + payload_len > self._max

    def _assemble(self, fin: bool, opcode: int, payload: bytes) -> tuple[int, bytes] | None:
        if opcode >= OP_CLOSE:
            return opcode, payload
        if opcode == OP_CONTINUATION:
            if self._partial is None:
                raise FrameError("continuation frame without a message to continue")
            self._partial.chunks.append(payload)
            self._partial.size += len(payload)
            if not fin:
                return None
            whole, self._partial = self._partial, None
            return _checked(whole.opcode, b"".join(whole.chunks))
        if self._partial is not None:
            raise FrameError("new data frame before the previous message finished")
        if fin:
            return _checked(opcode, payload)
        self._partial = _Partial(opcode, [payload], len(payload))
        return None


def _checked(opcode: int, payload: bytes) -> tuple[int, bytes]:
    """A whole data message; text must be UTF-8, or the connection fails (RFC 6455 8.1)."""
    if opcode == OP_TEXT:
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError as e:
            raise FrameError(
                f"a text message that is not UTF-8: {e.reason} at byte {e.start}", CLOSE_INVALID_PAYLOAD
            ) from None
    return opcode, payload
