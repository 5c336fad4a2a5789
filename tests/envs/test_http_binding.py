"""The HTTP session binding: an episode over plain requests, on a real server and socket.

Same errors, limits, auth and metrics as the WebSocket path; sessions named by a header
(or, under `http_sessions: single`, the server's one session); OpenEnv's request and reply
bodies where its HTTP routes and ours overlap."""

from __future__ import annotations

import asyncio
import json

import pytest
from openenv.core.env_server.types import ResetRequest, ResetResponse, StepRequest, StepResponse
from sample_envs import AsyncCounterEnv, CounterEnv, SoloEnv, broken_factory
from wire import eventually

from envs.client.credentials import Credential
from envs.client.http_client import http_request
from envs.wire.http import ENV_TOKEN_HEADER, SESSION_HEADER
from hillclimb.errors import (
    AuthenticationError,
    CapacityReachedError,
    ExecutionError,
    FactoryError,
    MessageValidationError,
    SessionError,
    StepTimeoutError,
)


async def test_an_episode_over_http_with_tools_state_and_close(start_server, calls) -> None:
    running = await start_server(CounterEnv)
    async with running.http_client() as env:
        first = await env.reset(seed=4, episode_id="e1", start=2)
        assert (first.observation["total"], first.observation["note"]) == (2, "seed=4") and env.session_id
        steps = [await env.step({"amount": n}) for n in (3, 5)]
        assert [s.observation["total"] for s in steps] == [5, 10] and steps[-1].done
        assert (await env.call_tool("add", amount=1)).text == '{"total": 11}'  # the session's own instance
        assert await env.state() == {"episode_id": "e1", "step_count": 2, "total": 11}
        assert [t["name"] for t in await env.list_tools()][:2] == ["add", "greet"]
        assert (await env.reset()).observation["total"] == 0  # a reset restarts the same session
        assert len(running.server.sessions) == 1 and calls.created == 1
    await eventually(lambda: not running.server.sessions and calls.closed == 1)


async def test_sessions_are_kept_apart_by_their_header(start_server) -> None:
    running = await start_server(CounterEnv)
    async with running.http_client() as one, running.http_client() as two:
        await one.reset()
        await two.reset(start=5)
        await asyncio.gather(one.step({"amount": 1}), two.step({"amount": 2}))
        assert ((await one.state())["total"], (await two.state())["total"]) == (1, 7)
        assert one.session_id != two.session_id


async def test_requests_outside_a_session_get_a_typed_error_naming_the_header(start_server) -> None:
    running = await start_server(CounterEnv)
    async with running.http_client() as env:
        with pytest.raises(SessionError, match=SESSION_HEADER):
            await env.step({"amount": 1})
        env.session_id = "s99-forged"
        with pytest.raises(SessionError, match="no session"):
            await env.state()
    # A WebSocket's session is not reachable over HTTP, even by its id.
    async with running.client() as ws, running.http_client() as env:
        await ws.reset()
        env.session_id = next(iter(running.server.sessions))
        with pytest.raises(SessionError, match="no session"):
            await env.step({"amount": 1})


async def test_bad_requests_get_the_websocket_error_codes_and_the_session_lives(start_server) -> None:
    running = await start_server(CounterEnv, max_message_bytes=4096)
    async with running.http_client() as env:
        await env.reset()
        with pytest.raises(MessageValidationError) as bad:
            await env.step({"op": "fly"})
        assert bad.value.errors and bad.value.request == "step"
        with pytest.raises(ExecutionError, match="boom"):
            await env.step({"op": "raise"})
        with pytest.raises(MessageValidationError, match="4096"):
            await env.step({"op": "add", "pad": "x" * 5000})
        assert (await env.step({"amount": 2})).observation["total"] == 2  # still the same episode
        headers = {SESSION_HEADER: env.session_id}
        cases = {b"{not json": (400, "INVALID_JSON"), b'{"amount": 1}': (422, "VALIDATION_ERROR")}
        for body, (status, code) in cases.items():
            reply = await _raw(running, "/step", body, headers)
            assert (reply[0], reply[1]["data"]["code"]) == (status, code), body
        assert (await _raw(running, "/state", b"", headers, method="POST"))[0] == 405


async def test_capacity_and_factory_failures_are_typed_and_hold_no_slot(start_server, calls) -> None:
    running = await start_server(SoloEnv)
    async with running.client() as ws:
        await ws.reset()
        async with running.http_client() as env:
            with pytest.raises(CapacityReachedError):
                await env.reset()
    async with running.http_client() as env:  # the slot is free again: nothing was held by the refusal
        await env.reset()
    broken = await start_server(CounterEnv, factory=broken_factory)
    async with broken.http_client() as env:
        with pytest.raises(FactoryError, match="no GPU today"):
            await env.reset()
    assert not broken.server.sessions


async def test_a_step_past_the_deadline_closes_the_session(start_server, calls) -> None:
    running = await start_server(AsyncCounterEnv, step_timeout_s=0.2)
    async with running.http_client() as env:
        await env.reset()
        with pytest.raises(StepTimeoutError, match="step timeout"):
            await env.step({"op": "hang"})
        assert env.session_id is None and not running.server.sessions
        with pytest.raises(SessionError):
            await env.step({"amount": 1})
        assert (await env.reset()).observation["total"] == 0  # a new session
    # The environment's own TimeoutError is an ordinary failure: the session lives.
    async with running.http_client() as env:
        await env.reset()
        with pytest.raises(ExecutionError) as own:
            await env.step({"op": "timeout"})
        assert not isinstance(own.value, StepTimeoutError)
        assert (await env.step({"amount": 1})).observation["total"] == 1


async def test_a_failed_first_reset_leaves_no_session_behind(start_server, calls) -> None:
    running = await start_server(CounterEnv)
    async with running.http_client() as env:
        with pytest.raises(ExecutionError, match="valid integer"):
            await env.reset(start="many")
        assert env.session_id is None
    await eventually(lambda: not running.server.sessions and calls.closed == calls.created == 1)


async def test_idle_sessions_are_reaped_and_the_kept_connection_is_replaced(start_server, calls) -> None:
    # Timeouts seconds apart: a loaded host's late step must not find its session reaped.
    running = await start_server(CounterEnv, idle_timeout_s=3.0, header_timeout_s=0.1)
    async with running.http_client() as env:
        await env.reset()
        await eventually(lambda: not running.server._connections, timeout=10)  # closed by the header timeout
        assert (await env.step({"amount": 1})).observation["total"] == 1  # sent again on a new one
        await eventually(lambda: not running.server.sessions, timeout=15)
        with pytest.raises(SessionError, match="no session"):
            await env.step({"amount": 1})
        assert (await env.reset(start=4)).observation["total"] == 4  # as a WebSocket's reset reconnects
        assert (await env.step({"amount": 1})).observation["total"] == 5
    await eventually(lambda: calls.closed == 2)


async def test_auth_is_the_websockets_and_the_token_may_travel_in_its_own_header(start_server) -> None:
    running = await start_server(CounterEnv, token="env-secret")
    with pytest.raises(AuthenticationError, match="401"):
        async with running.http_client(token=None) as env:
            await env.reset()
    platform = Credential("platform-token")  # the ingress's: the server must look past it
    own = Credential.env_token("env-secret", header=ENV_TOKEN_HEADER)
    async with running.http_client(token=None, credentials=(platform, own)) as env:
        assert (await env.reset()).observation["total"] == 0
    wrong_own = Credential.env_token("guess", header=ENV_TOKEN_HEADER)  # the own header wins over Authorization
    with pytest.raises(AuthenticationError):
        async with running.http_client(credentials=(wrong_own,)) as env:
            await env.reset()
    assert not running.server.sessions


async def test_metrics_count_http_steps_and_sessions(start_server) -> None:
    running = await start_server(CounterEnv)
    async with running.http_client() as env:
        await env.reset()
        await env.step({"amount": 1})
        _, text = await http_request(running.url, "/metrics", token=running.token)
        assert 'hillclimb_env_calls_total{call="step"} 1' in text and "hillclimb_env_sessions 1" in text


async def test_single_mode_needs_no_header_and_keeps_one_session(start_server, calls) -> None:
    running = await start_server(CounterEnv, http_sessions="single")
    status, first = await _raw(running, "/reset", b'{"start": 3}', {})
    assert (status, first["observation"]["total"]) == (200, 3)
    status, stepped = await _raw(running, "/step", b'{"action": {"amount": 2}}', {})
    assert (status, stepped["observation"]["total"]) == (200, 5)
    assert (await _raw(running, "/state", b"", {}, method="GET"))[1]["total"] == 5
    await _raw(running, "/reset", b"{}", {})  # the same session again, not a second one
    assert len(running.server.sessions) == 1 and calls.created == 1
    reply = await _raw(running, "/step", b'{"action": {}}', {SESSION_HEADER: "another"})
    assert (reply[0], reply[1]["data"]["code"]) == (404, "SESSION_ERROR")
    assert (await _raw(running, "/close", b"", {}))[0] == 200
    assert (await _raw(running, "/step", b'{"action": {}}', {}))[0] == 404


async def test_bodies_are_openenvs_request_and_reply_models(start_server) -> None:
    """Where OpenEnv's HTTP routes and ours overlap, a body means the same thing to both."""
    running = await start_server(CounterEnv, http_sessions="single")
    reset_body = ResetRequest(seed=1, episode_id="x", start=2).model_dump_json(exclude_unset=True).encode()
    status, reset = await _raw(running, "/reset", reset_body, {})
    ResetResponse.model_validate(reset)
    step_body = StepRequest(action={"amount": 1}, request_id="r1").model_dump_json(exclude_unset=True).encode()
    status, step = await _raw(running, "/step", step_body, {})
    assert status == 200 and StepResponse.model_validate(step).observation["total"] == 3


async def test_a_client_refuses_an_oversized_reply(start_server) -> None:
    running = await start_server(CounterEnv)
    async with running.http_client(max_message_bytes=2048) as env:
        await env.reset()
        with pytest.raises(ConnectionError, match="over this client's limit"):
            await env.step({"op": "big", "amount": 10_000})


async def _raw(running, route: str, body: bytes, headers: dict[str, str], method: str = "POST") -> tuple[int, object]:
    """One request as any HTTP client would send it (no session bookkeeping)."""
    host, port = running.url.removeprefix("ws://").removesuffix("/ws").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    lines = [f"{method} {route} HTTP/1.1", "Host: x", f"Content-Length: {len(body)}", "Connection: close"]
    lines += [f"Authorization: Bearer {running.token}", *(f"{k}: {v}" for k, v in headers.items())]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    raw = await reader.read()
    writer.close()
    head, _, rest = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(rest) if rest else None
