"""MCP over both transports: JSON-RPC in the WebSocket "mcp" message (one session's instance)
and POST /mcp (a throwaway instance); tools/list, tools/call, initialize, ping, the JSON-RPC
error codes, tool failures as isError results, and notifications that get no reply."""

from __future__ import annotations

import json

import pytest
from sample_envs import CounterEnv, SoloEnv
from wire import RawWS, http_exchange

from envs.client.base import ToolResult
from envs.client.http_client import http_request
from hillclimb.errors import ExecutionError, StepTimeoutError


def _rpc(method: str, params: dict | None = None, request_id: int | None = 1) -> dict:
    request = {"jsonrpc": "2.0", "method": method, "params": params or {}}
    if request_id is not None:
        request["id"] = request_id
    return request


async def test_list_and_call_tools_over_the_session(start_server, calls):
    served = await start_server(CounterEnv)
    async with served.client() as client:
        await client.reset(start=1)
        tools = {t["name"]: t for t in await client.list_tools()}
        assert sorted(tools) == ["add", "explode", "greet", "nap", "peek"]
        assert tools["add"]["description"] == "Add `amount` to the total and return it."
        greet = tools["greet"]["inputSchema"]
        assert greet["required"] == ["name"] and greet["properties"]["punctuation"]["enum"] == ["!", "?"]
        assert await client.call_tool("add", amount=2) == ToolResult('{"total": 3}', False, {"total": 3})
        assert (await client.state())["total"] == 3  # the tool ran on this session's instance
        assert (await client.call_tool("greet", name="bob", punctuation="?")).text == "hello bob?"
        assert (await client.call_tool("peek")).structured == {"total": 3}
    assert calls.created == 1


async def test_tool_that_raises_is_an_error_result_and_the_session_lives_on(start_server):
    served = await start_server(CounterEnv)
    async with served.client() as client:
        result = await client.call_tool("explode")
        assert result == ToolResult("RuntimeError: tool exploded", True, None)
        assert (await client.step({"amount": 1})).observation["total"] == 1


@pytest.mark.parametrize(
    ("name", "arguments", "fragment"),
    [
        ("teleport", {}, "unknown tool 'teleport'"),
        ("add", {"amount": "lots"}, "amount"),
        ("add", {}, "amount: Field required"),
        ("add", {"amount": 1, "extra": 2}, "extra"),
        ("greet", {"name": "bob", "punctuation": "."}, "punctuation"),
    ],
)
async def test_bad_tool_calls_are_invalid_params(start_server, name, arguments, fragment):
    served = await start_server(CounterEnv)
    async with served.client() as client:
        with pytest.raises(ExecutionError, match=fragment) as e:
            await client.call_tool(name, **arguments)
        assert e.value.rpc_code == -32602
        assert (await client.call_tool("add", amount=1)).structured == {"total": 1}


RAW_CASES = {
    "initialize": (_rpc("initialize", {"protocolVersion": "2025-06-18"}), "result"),
    "ping": (_rpc("ping"), "result"),
    "unknown method": (_rpc("resources/list"), -32601),
    "not JSON-RPC 2.0": ({"jsonrpc": "1.0", "id": 1, "method": "tools/list"}, -32600),
    "no method": ({"jsonrpc": "2.0", "id": 1}, -32600),
    "params not an object": ({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": [1]}, -32602),
    "arguments not an object": (_rpc("tools/call", {"name": "add", "arguments": [1]}), -32602),
}


@pytest.mark.parametrize(("request_", "expected"), RAW_CASES.values(), ids=RAW_CASES.keys())
async def test_jsonrpc_over_the_ws_mcp_message(start_server, request_, expected):
    served = await start_server(CounterEnv)
    raw = await RawWS.open(served.url)
    try:
        reply = await raw.request({"type": "mcp", "data": request_})
        assert reply["type"] == "mcp" and reply["data"]["jsonrpc"] == "2.0"
        if expected == "result":
            assert reply["data"]["id"] == 1 and "error" not in reply["data"]
        else:
            assert reply["data"]["error"]["code"] == expected
    finally:
        await raw.aclose()


async def test_initialize_names_the_server(start_server):
    served = await start_server(CounterEnv)
    raw = await RawWS.open(served.url)
    try:
        result = (await raw.request({"type": "mcp", "data": _rpc("initialize", request_id=7)}))["data"]
        assert result["id"] == 7
        assert result["result"]["serverInfo"] == {"name": "CounterEnv"} and "tools" in result["result"]["capabilities"]
    finally:
        await raw.aclose()


@pytest.mark.parametrize(
    "notification",
    [
        _rpc("notifications/initialized", request_id=None),
        _rpc("tools/call", {"name": "add", "arguments": {"amount": 5}}, request_id=None),
    ],
    ids=["notifications/initialized", "tools/call without an id"],
)
async def test_notifications_get_no_reply(start_server, notification):
    served = await start_server(CounterEnv)
    raw = await RawWS.open(served.url)
    try:
        raw.send_json({"type": "mcp", "data": notification})
        reply = await raw.request({"type": "state"})  # the very next frame answers this, not the notification
        assert reply["type"] == "state"
        # A notification still runs: the add without an id moved the total.
        assert reply["data"]["total"] == (5 if notification["method"] == "tools/call" else 0)
    finally:
        await raw.aclose()


async def test_slow_tool_call_is_bounded_by_the_step_timeout(start_server):
    served = await start_server(CounterEnv, step_timeout_s=0.2)
    client = served.client()
    with pytest.raises(StepTimeoutError, match="mcp"):
        await client.call_tool("nap", seconds=5)
    await client.close()


# -- POST /mcp ---------------------------------------------------------------------------------


async def test_post_mcp(start_server, calls):
    served = await start_server(CounterEnv)
    url = served.url.replace("ws://", "http://")

    async def post(body):
        return await http_request(url, "/mcp", method="POST", body=body, token="test-token")

    status, listed = await post(_rpc("tools/list"))
    assert status == 200 and len(listed["result"]["tools"]) == 5
    status, called = await post(_rpc("tools/call", {"name": "greet", "arguments": {"name": "ann"}}, request_id=3))
    assert (status, called["id"], called["result"]["content"][0]["text"]) == (200, 3, "hello ann!")
    status, failed = await post(_rpc("tools/call", {"name": "explode"}))
    assert failed["result"]["isError"] is True
    status, unknown = await post(_rpc("nope/nope"))
    assert unknown["error"]["code"] == -32601
    status, bad = await post(_rpc("tools/call", {"name": "add", "arguments": {"amount": "x"}}))
    assert bad["error"]["code"] == -32602
    assert await post(_rpc("notifications/initialized", request_id=None)) == (202, None)
    assert calls.created == calls.closed == 6  # one throwaway instance per request, each closed


async def test_post_mcp_parse_error(start_server):
    served = await start_server(CounterEnv)
    raw = (
        b"POST /mcp HTTP/1.1\r\nAuthorization: Bearer test-token\r\nConnection: close\r\n"
        b"Content-Length: 9\r\n\r\n{not json"
    )
    status, _, body = await http_exchange(served.url, raw)
    assert status == 200 and json.loads(body)["error"]["code"] == -32700


async def test_post_mcp_counts_against_the_session_cap(start_server, calls):
    served = await start_server(SoloEnv)  # one session at most
    url = served.url.replace("ws://", "http://")
    holder = served.client()
    await holder.reset()
    status, refused = await http_request(
        url, "/mcp", method="POST", body=_rpc("tools/list", request_id=7), token="test-token"
    )
    assert status == 503 and refused["id"] == 7 and refused["error"]["code"] == -32000
    assert "capacity" in refused["error"]["message"] and calls.created == 1  # no instance was built for it
    await holder.close()
    status, listed = await http_request(url, "/mcp", method="POST", body=_rpc("tools/list"), token="test-token")
    assert status == 200 and listed["result"]["tools"]
    assert calls.created == calls.closed == 2


async def test_post_mcp_has_the_step_deadline(start_server, calls):
    served = await start_server(CounterEnv, step_timeout_s=0.2)
    url = served.url.replace("ws://", "http://")
    call = _rpc("tools/call", {"name": "nap", "arguments": {"seconds": 5}})
    status, late = await http_request(url, "/mcp", method="POST", body=call, token="test-token", timeout=2.0)
    assert status == 200 and late["error"]["code"] == -32000 and "step timeout" in late["error"]["message"]
    assert calls.created == calls.closed == 1
