"""WebSocket framing for the server and the client, by wsproto, sans I/O.

Both sides run on `asyncio.Protocol` and hand raw bytes to a `FrameCodec`; this module never
touches a socket. wsproto parses the frames (masking, lengths, reserved bits, control-frame
rules, fragment order, close codes, UTF-8 of text); the codec adds the one rule of ours: a
message longer than its limit is not buffered but reported once, as `OVERSIZED` when it ends,
and skipped, so that the connection and its session survive it. wsproto hands over a frame's
payload as it arrives, so a skipped message never sits in memory.
"""

from __future__ import annotations

import base64
import os
import struct

from wsproto.frame_protocol import FrameProtocol, Opcode, ParseFailed
from wsproto.utilities import generate_accept_token

OP_CONTINUATION = Opcode.CONTINUATION.value
OP_TEXT = Opcode.TEXT.value
OP_BINARY = Opcode.BINARY.value
OP_CLOSE = Opcode.CLOSE.value
OP_PING = Opcode.PING.value
OP_PONG = Opcode.PONG.value
OVERSIZED = -1
"""Pseudo-opcode: a data message exceeded the size limit and was skipped; its payload is its length."""

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_POLICY_VIOLATION = 1008
CLOSE_INTERNAL_ERROR = 1011
_NO_STATUS = 1005  # what a close frame without a code stands for; never sent (RFC 6455 7.4.1)


class FrameError(Exception):
    """The peer broke the framing rules; the connection must close with `close_code`."""

    def __init__(self, message: str, close_code: int = CLOSE_PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.close_code = close_code


def accept_key(client_key: str) -> str:
    """The `Sec-WebSocket-Accept` value for a client's `Sec-WebSocket-Key`."""
    return generate_accept_token(client_key.encode("ascii")).decode("ascii")


def new_client_key() -> str:
    return base64.b64encode(os.urandom(16)).decode("ascii")


def close_reply_code(code: int) -> int:
    """The code to answer a peer's close frame with: its own, or 1000 when it sent none.
    (Codes that may not be sent never get here: wsproto refuses such a close frame.)"""
    return CLOSE_NORMAL if code == _NO_STATUS else code


def parse_close_payload(payload: bytes) -> tuple[int, str]:
    if len(payload) < 2:
        return _NO_STATUS, ""
    (code,) = struct.unpack("!H", payload[:2])
    return code, payload[2:].decode("utf-8", "replace")


class FrameCodec:
    """One end of an open WebSocket: bytes in, whole messages out; messages in, frames out.

    `feed` returns `(opcode, payload)` pairs: data messages reassembled from their fragments,
    control frames as they arrive (also between fragments; a close frame's payload is its code
    and reason as on the wire). The client side masks what it writes and refuses masked frames;
    the server side the other way round.
    """

    def __init__(self, *, client: bool, max_message_bytes: int) -> None:
        self._protocol = FrameProtocol(client=client, extensions=[])
        self._max = max_message_bytes
        self._chunks: list[bytes] = []
        self._size = 0  # bytes of the data message now arriving
        self._skipping = False  # that message went over the limit: its bytes are dropped

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._protocol.receive_bytes(data)
        out: list[tuple[int, bytes]] = []
        try:
            for frame in self._protocol.received_frames():
                opcode = frame.opcode.value
                if opcode == OP_CLOSE:
                    code, reason = frame.payload
                    out.append((OP_CLOSE, b"" if code == _NO_STATUS else struct.pack("!H", code) + reason.encode()))
                elif opcode >= OP_CLOSE:
                    out.append((opcode, bytes(frame.payload)))
                else:
                    message = self._collect(opcode, frame.payload, frame.message_finished)
                    if message is not None:
                        out.append(message)
        except ParseFailed as e:
            raise FrameError(str(e), int(e.code)) from None
        return out

    def _collect(self, opcode: int, payload: bytes | str, finished: bool) -> tuple[int, bytes] | None:
        """Add a piece of a data message; the whole message once it has ended."""
        chunk = payload.encode() if isinstance(payload, str) else payload  # wsproto hands text over decoded
        self._size += len(chunk)
        if self._size > self._max:
            self._skipping, self._chunks = True, []
        elif not self._skipping:
            self._chunks.append(chunk)
        if not finished:
            return None
        size, chunks, skipped = self._size, self._chunks, self._skipping
        self._size, self._chunks, self._skipping = 0, [], False
        if skipped:
            return OVERSIZED, str(size).encode()
        return opcode, chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def text(self, payload: bytes) -> bytes:
        """A text frame of UTF-8 `payload` (one frame: messages here are never fragmented)."""
        return bytes(self._protocol.send_data(payload.decode("utf-8")))

    def ping(self, payload: bytes = b"") -> bytes:
        return bytes(self._protocol.ping(payload))

    def pong(self, payload: bytes) -> bytes:
        return bytes(self._protocol.pong(payload))

    def close(self, code: int, reason: str = "") -> bytes:
        """A close frame; wsproto cuts a long reason to fit without splitting a character."""
        return bytes(self._protocol.close(code, reason))
