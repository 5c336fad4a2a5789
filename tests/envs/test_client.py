"""EnvClient: URLs, typed results, every wire error code mapped to its exception, and the
failure modes of a long RL run — a peer that hangs up mid-request, goes silent, answers too
late, or is not there yet — each failing fast with a typed error instead of hanging."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import pickle
import tempfile
import time

import pytest
from sample_envs import AsyncCounterEnv, CountAction, CounterEnv, CountObservation, SoloEnv, broken_factory
from wire import CLOSE, CONTINUATION, PING, PONG, TEXT, FakePeer, RawWS, frame, read_frame, reply_with

from envs.client.base import Endpoint
from envs.client.http_client import http_request
from envs.client.ws_client import EnvClient
from hillclimb.errors import (
    ERROR_TYPES,
    AuthenticationError,
    CapacityReachedError,
    ConnectionLostError,
    ConnectTimeoutError,
    EnvError,
    EnvModuleNotFoundError,
    ErrorCode,
    ExecutionError,
    FactoryError,
    HillclimbError,
    InvalidJSONError,
    MessageTimeoutError,
    MessageValidationError,
    SessionError,
    StepTimeoutError,
    UnknownMessageTypeError,
)

# -- URLs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("ws://10.0.0.5:8000/ws", ("10.0.0.5", 8000, None, False, "/ws", "10.0.0.5:8000")),
        ("http://env:8000", ("env", 8000, None, False, "/ws", "env:8000")),
        ("http://env:8000/ws/", ("env", 8000, None, False, "/ws", "env:8000")),
        ("https://env.example", ("env.example", 443, None, True, "/ws", "env.example:443")),
        ("wss://proxy/sandbox/7/", ("proxy", 443, None, True, "/sandbox/7/ws", "proxy:443")),
        ("ws://[::1]:9000", ("::1", 9000, None, False, "/ws", "[::1]:9000")),
        ("unix:///run/hillclimb/env.sock", (None, None, "/run/hillclimb/env.sock", False, "/ws", "localhost")),
        (
            "https://pool.example/p1?identifier=s-9",
            ("pool.example", 443, None, True, "/p1/ws?identifier=s-9", "pool.example:443"),
        ),
    ],
)
def test_endpoint_parsing(url, expected):
    e = Endpoint.parse(url)
    assert (e.host, e.port, e.uds, e.tls, e.path, e.host_header) == expected


@pytest.mark.parametrize(
    "url", ["ftp://env/ws", "unix://", "unix://relative.sock", "ws:///ws", "env:8000", "", "ws://env:notaport"]
)
def test_bad_urls_are_value_errors(url):
    with pytest.raises(ValueError):
        EnvClient(url)


def test_token_never_shows():
    client = EnvClient("ws://127.0.0.1:1/ws", token="s3cret-token")
    assert "s3cret" not in repr(client) and "s3cret" not in str(client)


# -- episodes ------------------------------------------------------------------------------


async def test_typed_episode(start_server, calls):
    served = await start_server(CounterEnv)
    async with served.client(observation_type=CountObservation) as client:
        first = await client.reset(seed=3, episode_id="ep-1", start=4)
        assert isinstance(first.observation, CountObservation)
        assert (first.observation.total, first.observation.note, first.reward, first.done) == (4, "seed=3", None, False)
        result = await client.step(CountAction(amount=6))  # a model action is sent as JSON
        assert (result.observation.total, result.reward, result.done, result.metadata) == (10, 6.0, True, {"step": 1})
        assert await client.state() == {"episode_id": "ep-1", "step_count": 1, "total": 10}
        stamped = await client.step({"op": "stamp"})
        assert stamped.observation.metadata == {"at": "2026-01-02T03:04:05Z"}
    assert not client.connected
    assert calls.created == calls.closed == 1


async def test_close_is_idempotent_and_reset_reconnects(start_server, calls):
    served = await start_server(CounterEnv)
    client = served.client()
    await client.reset(start=1)
    await client.close()
    await client.close()
    assert (await client.reset(start=2)).observation["total"] == 2
    await client.close()
    assert calls.created == calls.closed == 2


async def test_send_reset_pipelines_the_first_step(start_server, calls):
    served = await start_server(CounterEnv)
    async with served.client() as client:
        await client.send_reset(seed=1, start=4)
        # Sent before the reset's reply was read; each reply is paired with its own request.
        assert (await client.step({"amount": 3})).observation["total"] == 7
        await client.send_reset(start=1)
        await client.settle()
        await client.settle()  # nothing left to read: a no-op
        assert await client.state() == {"episode_id": None, "step_count": 0, "total": 1}
    assert calls.created == calls.closed == 1


async def test_a_failed_pipelined_reset_fails_the_next_request_and_drops_the_connection(start_server, calls):
    served = await start_server(CounterEnv)
    client = served.client()
    await client.send_reset(start=2, bogus=1)
    with pytest.raises(MessageValidationError, match="bogus") as refused:
        await client.step({"amount": 1})
    assert refused.value.request == "reset"
    assert not client.connected  # the step sent behind it ran on no episode: its reply is never read
    assert (await client.reset(start=2)).observation["total"] == 2
    await client.send_reset(bogus=2)
    with pytest.raises(MessageValidationError) as settled:
        await client.settle()
    assert settled.value.request == "reset"
    await client.close()


async def test_errors_name_the_request_they_answer(start_server, calls):
    served = await start_server(CounterEnv)
    async with served.client() as client:
        await client.reset()
        with pytest.raises(MessageValidationError) as refused:
            await client.step({"amount": "lots"})
    assert refused.value.request == "step"


# -- error codes -----------------------------------------------------------------------------


async def _server_error(start_server, code: ErrorCode) -> dict:
    """The error frame the real server sends for `code`, provoked the rawest way there is."""
    if code is ErrorCode.CAPACITY_REACHED:
        served = await start_server(SoloEnv)
        holder = await RawWS.open(served.url)
        await holder.request({"type": "reset", "data": {}})
        raw = await RawWS.open(served.url)
        error = await raw.recv_json()
        await holder.aclose()
    elif code is ErrorCode.FACTORY_ERROR:
        raw = await RawWS.open((await start_server(CounterEnv, factory=broken_factory)).url)
        error = await raw.recv_json()
    elif code is ErrorCode.SESSION_ERROR:
        raw = await RawWS.open((await start_server(CounterEnv, idle_timeout_s=0.1)).url)
        error = await raw.recv_json()
    else:
        raw = await RawWS.open((await start_server(CounterEnv)).url)
        sent = {
            ErrorCode.INVALID_JSON: b"{not json",
            ErrorCode.UNKNOWN_TYPE: b'{"type": "jump"}',
            ErrorCode.VALIDATION_ERROR: b'{"type": "step", "data": {"amount": "lots"}}',
            ErrorCode.EXECUTION_ERROR: b'{"type": "step", "data": {"op": "raise"}}',
        }[code]
        raw.send(0x1, sent)
        error = await raw.recv_json()
    await raw.aclose()
    assert error["type"] == "error" and error["data"]["code"] == code.value
    return error


@pytest.mark.parametrize("code", list(ErrorCode), ids=[c.value for c in ErrorCode])
async def test_every_server_error_code_raises_its_type(start_server, code):
    """Replay the exact frame our server sends for each code to the client: it raises the mapped type."""
    error = await _server_error(start_server, code)
    peer = FakePeer(functools.partial(reply_with, [error]))
    client = EnvClient(await peer.start(), connect_timeout_s=2.0)
    try:
        with pytest.raises(ERROR_TYPES[code]) as raised:
            await client.step({"amount": 1})
        assert raised.value.code is code and raised.value.message == error["data"]["message"]
        for name, value in error["data"].items():
            if name not in ("message", "code"):
                assert getattr(raised.value, name) == value
    finally:
        await client.close()
        await peer.aclose()


async def test_error_types_end_to_end(start_server, calls):
    served = await start_server(CounterEnv)
    async with served.client() as client:
        with pytest.raises(MessageValidationError) as e:
            await client.step({"amount": "lots"})
        assert e.value.errors[0]["loc"] == ["amount"]
        with pytest.raises(MessageValidationError, match="colour"):
            await client.reset(colour="red")
        with pytest.raises(ExecutionError, match="boom"):
            await client.step({"op": "raise"})
        assert (await client.step({"amount": 2})).observation["total"] == 2  # the session survived all three
    broken = await start_server(CounterEnv, factory=broken_factory)
    client = broken.client()
    with pytest.raises(FactoryError, match="no GPU today") as e:
        await client.reset()
    assert e.value.factory_name == "CounterEnv"
    await client.close()


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"message": "m", "code": "EXECUTION_ERROR", "timeout": True}, StepTimeoutError),
        ({"message": "m", "code": "TEAPOT"}, ExecutionError),
        ({"message": "m"}, ExecutionError),
        ({"message": "m", "code": "INVALID_JSON"}, InvalidJSONError),
        ({"message": "m", "code": "UNKNOWN_TYPE"}, UnknownMessageTypeError),
    ],
)
async def test_unusual_error_frames(data, expected):
    peer = FakePeer(functools.partial(reply_with, [{"type": "error", "data": data}]))
    client = EnvClient(await peer.start())
    try:
        with pytest.raises(expected) as e:
            await client.reset()
        assert type(e.value) is expected
    finally:
        await client.close()
        await peer.aclose()


@pytest.mark.parametrize(
    "error",
    [
        StepTimeoutError("slow", timeout=True),
        MessageValidationError("bad", errors=[{"loc": ["a"], "msg": "x"}]),
        CapacityReachedError("full", active_sessions=1, max_sessions=1),
        SessionError("reaped"),
        ConnectionLostError("gone", close_code=1001),
        AuthenticationError("refused"),
        EnvModuleNotFoundError("no module named 'my_env'", module="my_env"),
    ],
)
def test_errors_pickle_with_their_fields(error):
    # Ray re-raises exceptions in another process: type, message and fields must survive.
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error) and str(copy) == str(error) and vars(copy) == vars(error)
    assert isinstance(copy, HillclimbError)


def test_error_types_keep_their_stdlib_bases():
    assert issubclass(StepTimeoutError, ExecutionError) and issubclass(StepTimeoutError, TimeoutError)
    assert issubclass(MessageTimeoutError, TimeoutError) and issubclass(ConnectTimeoutError, TimeoutError)
    assert issubclass(ConnectionLostError, ConnectionError) and issubclass(AuthenticationError, PermissionError)
    assert issubclass(MessageValidationError, ValueError) and issubclass(MessageValidationError, EnvError)
    assert issubclass(EnvModuleNotFoundError, ModuleNotFoundError) and issubclass(EnvModuleNotFoundError, LookupError)
    assert {t.code for t in ERROR_TYPES.values()} == set(ErrorCode)


# -- dropped connections -------------------------------------------------------------------


async def _hang_up_after_first_message(abort: bool, reader, writer) -> None:
    await read_frame(reader)
    writer.transport.abort() if abort else writer.close()


@pytest.mark.parametrize("abort", [False, True], ids=["FIN", "RST"])
async def test_peer_hanging_up_mid_request_fails_at_once(abort):
    peer = FakePeer(functools.partial(_hang_up_after_first_message, abort))
    client = EnvClient(await peer.start(), message_timeout_s=30.0, ping_interval_s=None)
    try:
        started = time.monotonic()
        with pytest.raises(ConnectionLostError, match="connection lost"):
            await client.reset()
        assert time.monotonic() - started < 10  # not the 30 s message timeout
        assert not client.connected
    finally:
        await client.close()
        await peer.aclose()


async def test_server_shutting_down_mid_step_fails_the_step_at_once(start_server, calls):
    served = await start_server(AsyncCounterEnv)
    client = served.client(message_timeout_s=30.0)
    await client.reset()
    pending = asyncio.ensure_future(client.step({"op": "hang"}))
    assert await asyncio.to_thread(calls.entered.wait, 2.0)
    started = time.monotonic()
    await served.server.close()
    with pytest.raises(ConnectionLostError, match="1001"):
        await asyncio.wait_for(pending, 10)
    assert time.monotonic() - started < 10  # not the 30 s message timeout
    assert calls.closed == 1  # the hung step was cancelled and its environment closed
    await client.close()


async def test_step_after_a_drop_must_reset_and_reset_reconnects(start_server, calls):
    first = await start_server(CounterEnv, unix=True)
    client = first.client()
    await client.reset(start=3)
    await client.step({"amount": 1})
    await first.server.close()
    path = first.url.removeprefix("unix://")
    second = await start_server(CounterEnv)
    await second.server.start_unix(path)  # a restarted server on the same socket
    with pytest.raises(ConnectionLostError, match=r"call reset\(\)"):
        await client.step({"amount": 1})
    with pytest.raises(ConnectionLostError):
        await client.state()
    assert (await client.reset(start=5)).observation["total"] == 5  # reconnected, new episode
    assert (await client.step({"amount": 1})).observation["total"] == 6
    await client.close()


async def test_message_timeout_drops_the_socket(start_server, calls):
    served = await start_server(AsyncCounterEnv)
    client = served.client(message_timeout_s=0.2)
    await client.reset()
    started = time.monotonic()
    with pytest.raises(MessageTimeoutError, match="0.2 s"):
        await client.step({"op": "hang"})  # never replies: only the message timeout ends it
    assert time.monotonic() - started < 10
    assert not client.connected
    with pytest.raises(ConnectionLostError, match="reset"):
        await client.step({"amount": 1})
    assert (await client.reset(start=1)).observation["total"] == 1
    await client.close()


async def test_cancelled_request_never_pairs_a_stale_reply_with_the_next(start_server):
    served = await start_server(AsyncCounterEnv)
    client = served.client()
    await client.reset()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(client.step({"op": "sleep", "seconds": 0.3, "amount": 5}), 0.05)
    with pytest.raises(ConnectionLostError, match="cancelled"):
        await client.step({"amount": 1})
    await asyncio.sleep(0.4)  # the late reply would have arrived by now
    result = await client.reset(start=1)
    assert (result.observation["total"], result.observation["note"]) == (1, "seed=None")
    await client.close()


async def _ping_then_fragmented_reply(pongs: list[bytes], reader, writer) -> None:
    await read_frame(reader)
    text = json.dumps({"type": "observation", "data": {"observation": {"parts": 2}, "reward": 1.5}}).encode()
    writer.write(
        frame(TEXT, text[:10], fin=False, mask=False)
        + frame(PING, b"are you there", mask=False)
        + frame(CONTINUATION, text[10:], mask=False)
    )
    while True:
        _, opcode, payload = await read_frame(reader)
        if opcode == PONG:
            pongs.append(payload)
        if opcode == CLOSE:
            writer.write(frame(CLOSE, payload[:2], mask=False))
            return


async def test_client_answers_pings_and_reassembles_fragments():
    pongs: list[bytes] = []
    peer = FakePeer(functools.partial(_ping_then_fragmented_reply, pongs))
    client = EnvClient(await peer.start())
    try:
        result = await client.reset()
        assert (result.observation, result.reward) == ({"parts": 2}, 1.5)
    finally:
        await client.close()
        await peer.aclose()
    assert pongs == [b"are you there"]


async def _send_then_wait(data: bytes, reader, writer) -> None:
    await read_frame(reader)
    writer.write(data)
    await reader.read()


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (frame(TEXT, b"x" * 5000, mask=False), "over this client's limit of 1024"),
        (frame(TEXT, b"{}", mask=True), "must not be masked"),
        (frame(TEXT, b"{}", mask=False, rsv=0b010), "reserved bits"),
    ],
    ids=["oversized reply", "masked server frame", "reserved bits"],
)
async def test_server_breaking_the_protocol_is_a_lost_connection(data, fragment):
    peer = FakePeer(functools.partial(_send_then_wait, data))
    client = EnvClient(await peer.start(), max_message_bytes=1024)
    try:
        with pytest.raises(ConnectionLostError, match=fragment):
            await client.reset()
        assert not client.connected
    finally:
        await client.close()
        await peer.aclose()


# -- keepalive -------------------------------------------------------------------------------


async def _go_silent(reader, writer) -> None:
    await reader.read()  # swallows pings; never answers anything


async def test_keepalive_detects_a_silent_peer():
    peer = FakePeer(_go_silent)
    client = EnvClient(await peer.start(), ping_interval_s=0.05, ping_timeout_s=0.05, message_timeout_s=30.0)
    try:
        started = time.monotonic()
        with pytest.raises(ConnectionLostError, match="keepalive"):
            await client.reset()
        assert time.monotonic() - started < 10  # not the 30 s message timeout
    finally:
        await client.close()
        await peer.aclose()


async def _answer_pings_then_reply_late(reader, writer) -> None:
    loop = asyncio.get_running_loop()
    late = {"type": "observation", "data": {"observation": {"late": True}}}
    reply = frame(TEXT, json.dumps(late).encode(), mask=False)
    while True:
        _, opcode, payload = await read_frame(reader)
        if opcode == PING:
            writer.write(frame(PONG, payload, mask=False))
        elif opcode == TEXT:  # later than interval + timeout: judging by silence would drop the connection
            loop.call_later(2.0, writer.write, reply)
        elif opcode == CLOSE:
            writer.close()
            return


async def test_keepalive_keeps_a_peer_that_answers_pings():
    # Silence between pings is normal: only an unanswered ping may end the connection, even
    # with a ping timeout much shorter than the interval.
    peer = FakePeer(_answer_pings_then_reply_late)
    # The timeout is still shorter than the interval, yet tolerates a 0.5 s stall of a loaded machine.
    client = EnvClient(await peer.start(), ping_interval_s=0.6, ping_timeout_s=0.5)
    try:
        assert (await client.reset()).observation == {"late": True}
    finally:
        await client.close()
        await peer.aclose()


async def test_keepalive_does_not_kill_a_long_step(start_server):
    served = await start_server(CounterEnv)  # a sync step: its thread holds the env, the loop answers pings
    # A step longer than the ping timeout: a blocked loop would leave pings unanswered for 2.5 s.
    async with served.client(ping_interval_s=0.05, ping_timeout_s=1.0) as client:
        await client.reset()
        assert (await client.step({"op": "sleep", "seconds": 2.5, "amount": 2})).observation["total"] == 2


# -- connecting ------------------------------------------------------------------------------


@pytest.mark.parametrize("stale", [False, True], ids=["no socket file yet", "stale socket file"])
async def test_connect_waits_for_the_unix_socket_to_appear(start_server, calls, stale):
    with tempfile.TemporaryDirectory(prefix="hc-") as directory:
        path = os.path.join(directory, "env.sock")
        if stale:  # a socket file nobody listens on: connecting is refused, not "no such file"
            stale_server = await start_server(CounterEnv)
            await stale_server.server.start_unix(path)
            await stale_server.server.close()
        client = EnvClient(f"unix://{path}", token="test-token", connect_timeout_s=60)
        pending = asyncio.ensure_future(client.reset(start=2))
        await asyncio.sleep(0.3)
        assert not pending.done()
        later = await start_server(CounterEnv)
        await later.server.start_unix(path)  # the sandbox's server is up at last
        assert (await asyncio.wait_for(pending, 30)).observation["total"] == 2
        await client.close()


@pytest.mark.parametrize("url", ["unix:///tmp/hc-no-such-dir/env.sock", "ws://127.0.0.1:1/ws"], ids=["unix", "tcp"])
async def test_connect_timeout_when_no_server_ever_comes(url):
    client = EnvClient(url, connect_timeout_s=1.0)
    started = time.monotonic()
    with pytest.raises(ConnectTimeoutError, match="1 s"):
        await client.reset()
    # It gives up once the next backoff (at most 0.25 s) would pass the deadline: never before 0.75 s.
    assert 0.5 < time.monotonic() - started < 15


async def test_refused_upgrade_names_the_status(start_server):
    served = await start_server(CounterEnv)
    client = EnvClient(served.url.replace("/ws", "/elsewhere"), token=served.token, connect_timeout_s=60)
    started = time.monotonic()
    with pytest.raises(ConnectionLostError, match="upgrade refused: HTTP 404") as refused:
        await client.reset()
    assert refused.value.status == 404 and time.monotonic() - started < 30  # an answer, not retried to the deadline


class PrefixIngress:
    """A reverse proxy as an ingress or a session pool is: it serves the env server under a path
    prefix, routes only requests naming a session (`?identifier=`), and strips the prefix."""

    def __init__(self, backend_port: int, prefix: str) -> None:
        self.backend_port, self.prefix = backend_port, prefix
        self.seen: list[str] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        method, target, rest = head.decode("latin-1").split(" ", 2)
        self.seen.append(target)
        if not target.startswith(self.prefix + "/") or "identifier=" not in target:
            writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.backend_port)
        up_writer.write(f"{method} {target[len(self.prefix) :]} {rest}".encode("latin-1"))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)


async def test_an_episode_runs_through_an_ingress_with_a_path_prefix_and_a_query(start_server):
    served = await start_server(CounterEnv)
    backend_port = int(served.url.split(":")[2].split("/")[0])
    ingress = PrefixIngress(backend_port, "/pools/p1")
    listener = await asyncio.start_server(ingress.handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}/pools/p1?identifier=s-42"
    try:
        assert (await http_request(url, "/health"))[0] == 200
        async with EnvClient(url, token=served.token) as env:
            await env.reset()
            assert (await env.step({"amount": 3})).observation["total"] == 3
    finally:
        listener.close()
    assert ingress.seen[:2] == ["/pools/p1/health?identifier=s-42", "/pools/p1/ws?identifier=s-42"]
