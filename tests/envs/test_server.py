"""EnvServer over real sockets: HTTP routes and their errors, bearer auth before any environment
exists, every wire error code with the session surviving it, capacity, factory failures, idle
reaping, the per-step timeout, and sync steps running off the event loop."""

from __future__ import annotations

import asyncio
import json
import re
import time

import pytest
from sample_envs import AsyncCounterEnv, CounterEnv, ReservedToolEnv, SoloEnv, broken_factory
from wire import RawWS, eventually, http_exchange, open_stream

from envs.client.http_client import http_request
from envs.server.env_server import EnvServer
from envs.server.metrics import parse_metrics
from envs.server.runtime import EnvRuntime
from envs.wire import websocket as ws
from hillclimb.errors import (
    AuthenticationError,
    CapacityReachedError,
    ConnectionLostError,
    ExecutionError,
    MessageValidationError,
    SessionError,
    StepTimeoutError,
)

AUTH_HEADER = b"Authorization: Bearer test-token"


def _http_url(served) -> str:
    return served.url.replace("ws://", "http://")


# -- HTTP routes ---------------------------------------------------------------------


async def test_health_schema_metadata(start_server, calls):
    served = await start_server(CounterEnv)
    url = _http_url(served)
    assert await http_request(url, "/health") == (200, {"status": "healthy"})
    status, schema = await http_request(url, "/schema", token="test-token")
    assert status == 200 and set(schema) == {"action", "observation", "state"}
    assert schema["action"]["properties"]["op"]["enum"][0] == "add"
    assert "total" in schema["observation"]["properties"] and "total" in schema["state"]["properties"]
    status, meta = await http_request(url, "/metadata", token="test-token")
    assert status == 200 and meta["name"] == "CounterEnv"
    assert meta["description"].startswith("Adds numbers")


@pytest.mark.parametrize("env_cls", [CounterEnv, AsyncCounterEnv], ids=["sync", "async"])
async def test_metrics_time_the_environments_own_calls(start_server, env_cls):
    """Each reset and step is counted and timed around the environment's method alone: a
    50 ms sleep in it shows, a step that raised counts, an action the schema refused never
    reached the environment and does not."""
    served = await start_server(env_cls)
    url = _http_url(served)

    async def metrics() -> dict[str, float]:
        status, text = await http_request(url, "/metrics", token="test-token")
        assert status == 200 and isinstance(text, str)
        return parse_metrics(text)

    assert await metrics() == {
        "calls_total{reset}": 0,
        "calls_total{step}": 0,
        "call_seconds_total{reset}": 0,
        "call_seconds_total{step}": 0,
        "sessions": 0,
        "max_sessions": 64,
    }
    async with served.client() as client:
        await client.reset()
        await client.step({"op": "sleep", "seconds": 0.05})
        await client.step({"amount": 1})
        with pytest.raises(ExecutionError, match="boom"):
            await client.step({"op": "raise"})
        with pytest.raises(MessageValidationError):
            await client.step({"op": "no such op"})
        during = await metrics()
    assert during["sessions"] == 1
    assert during["calls_total{reset}"] == 1 and during["calls_total{step}"] == 3
    assert 0.05 <= during["call_seconds_total{step}"] < 0.05 + 0.5
    assert 0 < during["call_seconds_total{reset}"] < 0.5
    await eventually(lambda: served.server.sessions == {})
    assert (await metrics())["sessions"] == 0


def test_parse_metrics_ignores_comments_and_foreign_samples():
    text = (
        "# HELP hillclimb_env_calls_total Calls.\n"
        'hillclimb_env_calls_total{call="step"} 12\n'
        "process_cpu_seconds_total 3.5\n"
        "hillclimb_env_sessions 2\n"
    )
    assert parse_metrics(text) == {"calls_total{step}": 12.0, "sessions": 2.0}


def _request(line: bytes, *headers: bytes) -> bytes:
    """A request that asks the server to hang up after answering, so the test can read to EOF."""
    return b"\r\n".join([line, *headers, b"Connection: close", b"", b""])


MALFORMED = {
    "garbage request line": (b"GARBAGE\r\n\r\n", 400),
    "HTTP/2 version": (_request(b"GET /health HTTP/2.0"), 400),
    "header without colon": (_request(b"GET /health HTTP/1.1", b"no colon here"), 400),
    "header name with a space": (_request(b"GET /health HTTP/1.1", b"Bad Name : x"), 400),
    "non-numeric Content-Length": (_request(b"POST /mcp HTTP/1.1", AUTH_HEADER, b"Content-Length: abc"), 400),
    "non-ASCII digit Content-Length": (_request(b"POST /mcp HTTP/1.1", AUTH_HEADER, b"Content-Length: \xb2"), 400),
    "head over 16 KiB": (_request(b"GET /health HTTP/1.1", b"X-Pad: " + b"a" * 20000), 431),
    "chunked body": (_request(b"POST /mcp HTTP/1.1", AUTH_HEADER, b"Transfer-Encoding: chunked"), 411),
    "body over the message limit": (_request(b"POST /mcp HTTP/1.1", AUTH_HEADER, b"Content-Length: 99999999"), 413),
    "wrong method on /schema": (_request(b"POST /schema HTTP/1.1", AUTH_HEADER, b"Content-Length: 0"), 405),
    "wrong method on /metadata": (_request(b"DELETE /metadata HTTP/1.1", AUTH_HEADER), 405),
    "wrong method on /mcp": (_request(b"GET /mcp HTTP/1.1", AUTH_HEADER), 405),
    "unknown path": (_request(b"GET /nope HTTP/1.1"), 404),
    "/ws without an upgrade": (_request(b"GET /ws HTTP/1.1", AUTH_HEADER), 426),
}


@pytest.mark.parametrize(("raw", "status"), MALFORMED.values(), ids=MALFORMED.keys())
async def test_bad_http_gets_a_status_and_the_server_lives_on(start_server, raw, status):
    served = await start_server(CounterEnv)
    got, head, body = await http_exchange(served.url, raw)
    assert got == status
    assert "error" in json.loads(body)
    if status == 405:
        assert re.search(rb"\r\nAllow: (GET|POST)", head)
    assert await http_request(_http_url(served), "/health") == (200, {"status": "healthy"})


async def test_keep_alive_serves_pipelined_requests_in_order(start_server):
    served = await start_server(CounterEnv)
    reader, writer = await open_stream(served.url)
    try:
        writer.write(
            b"GET /health HTTP/1.1\r\n\r\nGET /nope HTTP/1.1\r\n\r\nGET /health HTTP/1.1\r\nConnection: close\r\n\r\n"
        )
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", data) == [b"200", b"404", b"200"]


async def test_metadata_of_a_broken_factory_is_a_500(start_server, calls):
    served = await start_server(CounterEnv, factory=broken_factory)
    status, body = await http_request(_http_url(served), "/metadata", token="test-token")
    assert status == 500 and "no GPU today" in body["error"]
    assert await http_request(_http_url(served), "/health") == (200, {"status": "healthy"})


# -- auth ------------------------------------------------------------------------------

BAD_CREDENTIALS = {"missing": None, "wrong": "Bearer nope", "empty bearer": "Bearer ", "basic": "Basic test-token"}


@pytest.mark.parametrize("authorization", BAD_CREDENTIALS.values(), ids=BAD_CREDENTIALS.keys())
@pytest.mark.parametrize("path", ["/ws", "/schema", "/metadata", "/metrics", "/mcp"])
async def test_refused_before_any_environment_exists(start_server, calls, path, authorization):
    served = await start_server(CounterEnv)
    method = "POST" if path == "/mcp" else "GET"
    lines = [
        f"{method} {path} HTTP/1.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        "Content-Length: 0",
    ]
    if authorization:
        lines.append(f"Authorization: {authorization}")
    status, head, body = await http_exchange(served.url, ("\r\n".join(lines) + "\r\n\r\n").encode())
    assert status == 401 and "token" in json.loads(body)["error"]
    assert b"\r\nWWW-Authenticate: Bearer" in head
    assert calls.created == 0


@pytest.mark.parametrize("token", [None, "wrong"])
async def test_client_with_bad_token_gets_authentication_error(start_server, calls, token):
    served = await start_server(CounterEnv)
    client = served.client(token=token)
    with pytest.raises(AuthenticationError, match="401"):
        await client.reset()
    await client.close()
    assert calls.created == 0
    assert "wrong" not in repr(client)


async def test_right_token_works_and_health_needs_none(start_server, calls):
    served = await start_server(CounterEnv)
    async with served.client() as client:
        assert (await client.reset(start=1)).observation["total"] == 1
    assert calls.created == 1
    assert (await http_request(_http_url(served), "/health"))[0] == 200


async def test_no_auth_server_accepts_anyone(start_server, calls):
    served = await start_server(CounterEnv, token=None)
    async with served.client(token=None) as client:
        assert (await client.step({"amount": 2})).observation["total"] == 2
    async with served.client(token="anything") as client:
        assert (await client.reset()).observation["total"] == 0
    assert (await http_request(_http_url(served), "/schema"))[0] == 200


def test_empty_token_is_refused_rather_than_disabling_auth():
    with pytest.raises(ValueError, match="empty"):
        EnvServer(EnvRuntime(CounterEnv), token="")
    with pytest.raises(ValueError, match="from the claim"):
        EnvServer(EnvRuntime(CounterEnv), token="t", claimable=True)


async def test_a_claimable_server_serves_nobody_until_claimed_then_only_its_claimant(start_server, calls):
    """A session pool starts servers before any sandbox is asked for: the first claim sets the token."""
    served = await start_server(CounterEnv, token=None, claimable=True)
    url = _http_url(served)
    assert (await http_request(url, "/health"))[0] == 200
    for token in (None, "anything"):
        assert (await http_request(url, "/schema", token=token))[0] == 401
        with pytest.raises(AuthenticationError, match="401"):
            async with served.client(token=token) as client:
                await client.reset()
    assert (await http_request(url, "/claim", method="POST"))[0] == 401  # a claim presents a token
    assert await http_request(url, "/claim", method="POST", token="mine") == (
        200,
        {"claimed": True, "env": f"{CounterEnv.__module__}:{CounterEnv.__qualname__}"},  # what it serves
    )
    assert (await http_request(url, "/claim", method="POST", token="mine"))[0] == 200  # a retried claim
    assert (await http_request(url, "/claim", method="POST", token="theirs"))[0] == 409
    async with served.client(token="mine") as client:
        assert (await client.reset(start=3)).observation["total"] == 3
    assert (await http_request(url, "/schema", token="theirs"))[0] == 401
    assert calls.created == 1


@pytest.mark.parametrize("token", ["test-token", None])
async def test_a_server_started_with_its_token_or_none_takes_no_claim(start_server, token):
    served = await start_server(CounterEnv, token=token)
    assert (await http_request(_http_url(served), "/claim", method="POST", token="mine"))[0] == 404
    assert (await http_request(_http_url(served), "/schema", token=token))[0] == 200  # its token unchanged


# -- wire errors: the server answers and the session lives on --------------------------


async def _raw(start_server, env_cls=CounterEnv, **config) -> RawWS:
    served = await start_server(env_cls, **config)
    return await RawWS.open(served.url)


BAD_MESSAGES = {
    "invalid JSON": (b"{not json", "INVALID_JSON"),
    "nesting deeper than the parser's stack": (b"[" * 100_000, "INVALID_JSON"),
    "JSON array": (b"[1, 2]", "VALIDATION_ERROR"),
    "unknown type": (b'{"type": "jump"}', "UNKNOWN_TYPE"),
    "no type": (b'{"data": {}}', "UNKNOWN_TYPE"),
    "bad action field": (b'{"type": "step", "data": {"amount": "lots"}}', "VALIDATION_ERROR"),
    "extra action field": (b'{"type": "step", "data": {"colour": "red"}}', "VALIDATION_ERROR"),
    "non-object step data": (b'{"type": "step", "data": "add"}', "VALIDATION_ERROR"),
    "non-object reset data": (b'{"type": "reset", "data": [1]}', "VALIDATION_ERROR"),
    "unknown reset kwarg": (b'{"type": "reset", "data": {"colour": "red"}}', "VALIDATION_ERROR"),
    "reset kwarg named self": (b'{"type": "reset", "data": {"self": 1}}', "VALIDATION_ERROR"),
    "env raises": (b'{"type": "step", "data": {"op": "raise"}}', "EXECUTION_ERROR"),
    "env raises TimeoutError": (b'{"type": "step", "data": {"op": "timeout"}}', "EXECUTION_ERROR"),
}


@pytest.mark.parametrize(("payload", "code"), BAD_MESSAGES.values(), ids=BAD_MESSAGES.keys())
async def test_bad_message_gets_its_code_and_the_session_lives_on(start_server, payload, code):
    raw = await _raw(start_server)
    try:
        assert (await raw.request({"type": "step", "data": {"amount": 2}}))["data"]["observation"]["total"] == 2
        raw.send(ws.OP_TEXT, payload)
        error = await raw.recv_json()
        assert error["type"] == "error" and error["data"]["code"] == code, error
        assert "timeout" not in error["data"]
        assert (await raw.request({"type": "step", "data": {"amount": 1}}))["data"]["observation"]["total"] == 3
        assert (await raw.request({"type": "state"}))["data"]["total"] == 3
    finally:
        await raw.aclose()


async def test_invalid_utf8_fails_a_text_message_only(start_server):
    """RFC 6455 8.1: text that is not UTF-8 fails the connection (1007, invalid payload data);
    the same bytes in a binary message are merely bad JSON, and the session lives on."""
    raw = await _raw(start_server)
    try:
        raw.send(ws.OP_BINARY, b"\xff\xfe{")
        assert (await raw.recv_json())["data"]["code"] == "INVALID_JSON"
        assert (await raw.request({"type": "step", "data": {"amount": 1}}))["data"]["observation"]["total"] == 1
        raw.send(ws.OP_TEXT, b"\xff\xfe{")
        assert await raw.close_code() == 1007
    finally:
        await raw.aclose()


async def test_validation_error_lists_what_and_where(start_server):
    raw = await _raw(start_server)
    try:
        error = (await raw.request({"type": "step", "data": {"amount": "lots", "op": "fly"}}))["data"]
        assert error["code"] == "VALIDATION_ERROR" and "2 error(s)" in error["message"]
        assert sorted(tuple(e["loc"]) for e in error["errors"]) == [("amount",), ("op",)]
        error = (await raw.request({"type": "reset", "data": {"colour": "red"}}))["data"]
        assert "'colour'" in error["message"] and "start" in error["message"]
    finally:
        await raw.aclose()


async def test_messages_are_answered_in_order_under_backpressure(start_server):
    raw = await _raw(start_server)
    try:
        for _ in range(200):  # far more than the inbox holds before the server stops reading
            raw.send_json({"type": "step", "data": {"amount": 1}})
        totals = [(await raw.recv_json())["data"]["observation"]["total"] for _ in range(200)]
        assert totals == list(range(1, 201))
    finally:
        await raw.aclose()


# -- capacity and factory --------------------------------------------------------------


async def test_capacity_reached_for_the_second_session(start_server, calls):
    served = await start_server(SoloEnv, max_sessions=8)  # not concurrency-safe: capacity 1
    async with served.client() as first:
        await first.reset()
        second = served.client()
        with pytest.raises(CapacityReachedError) as e:
            await second.reset()
        assert (e.value.active_sessions, e.value.max_sessions) == (1, 1)
        await second.close()
        raw = await RawWS.open(served.url)
        assert (await raw.recv_json())["data"]["code"] == "CAPACITY_REACHED"
        assert await raw.close_code() == ws.CLOSE_POLICY_VIOLATION
        await raw.aclose()
        assert (await first.step({"amount": 1})).observation["total"] == 1
    assert calls.created == 1


async def test_a_closed_session_frees_its_slot_at_once(start_server, calls):
    served = await start_server(SoloEnv)
    for i in range(20):
        async with served.client() as client:
            assert (await client.reset(start=i)).observation["total"] == i
    assert calls.created == calls.closed == 20


async def test_max_sessions_caps_concurrent_envs(start_server):
    served = await start_server(CounterEnv, max_sessions=2)
    async with served.client() as a, served.client() as b:
        await a.reset()
        await b.reset()
        c = served.client()
        with pytest.raises(CapacityReachedError):
            await c.reset()
        await c.close()


@pytest.mark.parametrize(
    ("env_cls", "factory", "message"),
    [
        (CounterEnv, broken_factory, "no GPU today"),
        (ReservedToolEnv, None, "reserved"),
    ],
    ids=["factory raises", "bad tool set"],
)
async def test_factory_error_closes_only_that_connection(start_server, calls, env_cls, factory, message):
    served = await start_server(env_cls, factory=factory)
    raw = await RawWS.open(served.url)
    try:
        error = (await raw.recv_json())["data"]
        assert error["code"] == "FACTORY_ERROR" and message in error["message"]
        assert await raw.close_code() == ws.CLOSE_INTERNAL_ERROR
    finally:
        await raw.aclose()
    assert calls.closed == calls.created  # an instance made before the failure was closed
    assert served.server.sessions == {}
    assert await http_request(_http_url(served), "/health") == (200, {"status": "healthy"})


# -- idle reaping ------------------------------------------------------------------------


async def test_idle_session_is_reaped_and_its_slot_freed(start_server, calls):
    served = await start_server(SoloEnv, idle_timeout_s=0.2)
    silent = served.client(ping_interval_s=None)
    await silent.reset()
    await eventually(lambda: calls.closed == 1)
    async with served.client() as newcomer:  # capacity 1: only possible once the slot is free
        assert (await newcomer.reset(start=5)).observation["total"] == 5
    with pytest.raises(SessionError, match="without a message"):
        await silent.step({"amount": 1})
    assert (await silent.reset()).observation["total"] == 0  # reset reconnects
    await silent.close()


async def test_reaping_notice_and_close_code_on_the_wire(start_server):
    raw = await _raw(start_server, idle_timeout_s=0.2)
    try:
        error = await raw.recv_json()
        assert error["data"]["code"] == "SESSION_ERROR"
        assert await raw.close_code() == ws.CLOSE_GOING_AWAY
    finally:
        await raw.aclose()


@pytest.mark.parametrize("sent", [b"", b"GET /health HTTP/1.1\r\nHost: x"], ids=["silent", "half a request head"])
async def test_never_upgraded_connection_is_reaped(start_server, sent):
    served = await start_server(CounterEnv, idle_timeout_s=0.2)
    reader, writer = await open_stream(served.url)
    try:
        writer.write(sent)
        assert await asyncio.wait_for(reader.read(), 10) == b""  # the server hung up
    finally:
        writer.close()
        await writer.wait_closed()


async def test_session_in_a_long_step_is_not_reaped(start_server, calls):
    served = await start_server(AsyncCounterEnv, idle_timeout_s=0.2)
    async with served.client(ping_interval_s=None) as client:
        assert (await client.step({"op": "sleep", "seconds": 0.8, "amount": 2})).observation["total"] == 2
        assert (await client.step({"amount": 1})).observation["total"] == 3
    assert calls.created == 1


# -- step timeout ----------------------------------------------------------------------


@pytest.mark.parametrize("env_cls", [AsyncCounterEnv, CounterEnv], ids=["async step", "sync step"])
async def test_step_past_the_timeout_closes_the_session(start_server, calls, env_cls):
    served = await start_server(env_cls, step_timeout_s=0.2)
    client = served.client()
    await client.step({"amount": 1})
    started = time.monotonic()
    with pytest.raises(StepTimeoutError) as e:  # a step that never ends: the timeout is the only way out
        await client.step({"op": "hang" if env_cls is AsyncCounterEnv else "block"})
    assert time.monotonic() - started < 10
    assert isinstance(e.value, ExecutionError) and isinstance(e.value, TimeoutError) and e.value.timeout is True
    assert "0.2 s" in str(e.value)
    with pytest.raises(ConnectionLostError, match="reset"):
        await client.step({"amount": 1})
    assert (await client.reset(start=7)).observation["total"] == 7  # the server lives on
    await client.close()


async def test_step_timeout_on_the_wire(start_server, calls):
    raw = await _raw(start_server, AsyncCounterEnv, step_timeout_s=0.1)
    try:
        raw.send_json({"type": "step", "data": {"op": "sleep", "seconds": 5}})
        raw.send_json({"type": "step", "data": {"op": "hang"}})  # queued behind it: must never run
        error = (await raw.recv_json())["data"]
        assert error["code"] == "EXECUTION_ERROR" and error["timeout"] is True
        assert await raw.close_code() == ws.CLOSE_INTERNAL_ERROR
        assert not calls.entered.is_set()
    finally:
        await raw.aclose()


async def test_env_raising_timeout_error_is_a_plain_execution_error(start_server):
    served = await start_server(AsyncCounterEnv, step_timeout_s=5)
    async with served.client() as client:
        with pytest.raises(ExecutionError, match="own deadline") as e:
            await client.step({"op": "timeout"})
        assert not isinstance(e.value, StepTimeoutError)
        assert (await client.step({"amount": 1})).observation["total"] == 1


# -- concurrency -------------------------------------------------------------------------


async def test_sync_step_runs_off_the_event_loop(start_server, calls):
    served = await start_server(CounterEnv)
    async with served.client() as blocked, served.client() as fast:
        await blocked.reset()
        await fast.reset()
        slow = asyncio.ensure_future(blocked.step({"op": "block", "amount": 5}))
        assert await asyncio.to_thread(calls.entered.wait, 10)
        for i in range(1, 6):
            assert (await asyncio.wait_for(fast.step({"amount": 1}), 10)).observation["total"] == i
        assert not slow.done()
        calls.gate.set()
        assert (await slow).observation["total"] == 5


async def test_vanished_client_frees_its_session(start_server, calls):
    served = await start_server(SoloEnv)
    raw = await RawWS.open(served.url)
    await raw.request({"type": "reset", "data": {}})
    raw.writer.transport.abort()  # no close message, no close frame: the peer is just gone
    await eventually(lambda: calls.closed == 1 and not served.server.sessions)
    async with served.client() as client:
        assert (await client.reset()).observation["total"] == 0


async def test_server_close_closes_every_environment(start_server, calls):
    served = await start_server(CounterEnv)
    clients = [served.client() for _ in range(3)]
    for client in clients:
        await client.reset()
    await served.server.close()
    assert calls.closed == calls.created == 3
    for client in clients:
        with pytest.raises(ConnectionLostError, match="1001"):
            await client.step({"amount": 1})
        await client.close()


async def test_unix_socket_episode(start_server, calls):
    served = await start_server(CounterEnv, unix=True)
    assert served.url.startswith("unix:///")
    assert await http_request(served.url, "/health") == (200, {"status": "healthy"})
    async with served.client() as client:
        assert (await client.reset(start=8)).observation["total"] == 8
        result = await client.step({"amount": 2})
        assert (result.observation["total"], result.reward, result.done) == (10, 2.0, True)
        assert (await client.state())["total"] == 10


# -- the step deadline and other cancellations ------------------------------------------


def _session_with_a_bounded_step() -> tuple[object, asyncio.Task[object]]:
    from types import SimpleNamespace

    from envs.server.ws_session import WebSocketSession

    session = WebSocketSession(None, None, env_name="e", step_timeout_s=5.0, max_message_bytes=1 << 20)  # type: ignore[arg-type]
    session.session = SimpleNamespace(deadline=None, timed_out=False)  # type: ignore[assignment]
    step = asyncio.get_running_loop().create_future()  # a step that never ends by itself
    session._task = asyncio.ensure_future(session._bounded(step))
    return session, session._task


async def test_a_step_past_its_deadline_is_answered_with_a_timeout() -> None:
    from envs.server.messages import StepDeadline

    session, task = _session_with_a_bounded_step()
    await asyncio.sleep(0)
    session.expire_step()  # the watchdog
    with pytest.raises(StepDeadline):
        await task


async def test_a_cancellation_beside_the_deadline_is_not_turned_into_a_timeout() -> None:
    # The server closing cancels the session as the watchdog does: that cancellation must go on,
    # not be answered with a timeout error after which the session would run on.
    session, task = _session_with_a_bounded_step()
    await asyncio.sleep(0)
    session.expire_step()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
