"""inventory: MCP tools over the WebSocket `mcp` message and `POST /mcp`, tool failures as
isError results, protocol misuse as JSON-RPC errors, and every task solved by its oracle
through `step` while wrong answers and stray stock changes fail the rubric."""

from __future__ import annotations

import functools
import json

import pytest

from envs.authoring.registry import load_suite, resolve_env_class
from envs.authoring.tasks import ActionParseError
from envs.builtin import inventory
from envs.builtin.inventory import InventoryEnv
from envs.builtin.inventory.tasks import SUITE, TASKS, call_text
from envs.builtin.inventory.warehouse import INITIAL_STOCK
from envs.client.http_client import http_request
from envs.server.mcp import INVALID_PARAMS
from hillclimb.errors import ExecutionError, MessageValidationError

ALL_TASKS = SUITE.tasks("train") + SUITE.tasks("heldout")
TOOLS = {"list_items", "get_item", "search", "adjust_stock", "submit"}


def _rpc(method: str, params: dict) -> dict:
    return {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}


def test_suite_shape():
    assert len(SUITE.tasks("train")) >= 8 and len(SUITE.tasks("heldout")) >= 4
    assert len({t.id for t in ALL_TASKS}) == len(ALL_TASKS)
    assert load_suite("inventory") is SUITE
    assert resolve_env_class("inventory") is InventoryEnv
    assert inventory.__all__ == ["InventoryAction", "InventoryEnv", "InventoryObservation", "InventoryState"]


async def test_tools_list_over_websocket_and_http(start_server):
    served = await start_server(InventoryEnv)
    async with served.client() as env:
        listed = await env.list_tools()
    assert {t["name"] for t in listed} == TOOLS
    adjust = next(t for t in listed if t["name"] == "adjust_stock")
    assert adjust["inputSchema"]["properties"]["delta"]["type"] == "integer"
    assert adjust["inputSchema"]["required"] == ["sku", "delta"]
    assert "delta" in adjust["description"]
    status, reply = await http_request(
        served.url, "/mcp", method="POST", body=_rpc("tools/list", {}), token=served.token
    )
    assert status == 200 and reply["result"]["tools"] == listed


async def test_tools_call_results_and_errors(start_server):
    served = await start_server(InventoryEnv)
    async with served.client() as env:
        found = await env.call_tool("get_item", sku="MN-201")
        assert not found.is_error
        assert found.structured == {
            "sku": "MN-201",
            "name": "27-inch monitor",
            "category": "displays",
            "price": 219.99,
            "stock": 6,
        }
        assert json.loads(found.text) == found.structured
        missing = await env.call_tool("get_item", sku="ZZ-999")
        assert missing.is_error and missing.text.startswith("UnknownSkuError: no item has SKU 'ZZ-999'")
        too_many = await env.call_tool("adjust_stock", sku="MS-102", delta=-4)
        assert too_many.is_error and "only 3 in stock" in too_many.text
        with pytest.raises(ExecutionError, match="unknown tool") as unknown:
            await env.call_tool("delete_everything")
        assert unknown.value.rpc_code == INVALID_PARAMS
        with pytest.raises(ExecutionError, match="bad arguments") as bad:
            await env.call_tool("adjust_stock", sku="KB-101", delta="lots")
        assert bad.value.rpc_code == INVALID_PARAMS
    # POST /mcp is stateless: a throwaway instance with the initial stock, no reset needed.
    status, reply = await http_request(
        served.url,
        "/mcp",
        method="POST",
        body=_rpc("tools/call", {"name": "search", "arguments": {"query": "cable"}}),
        token=served.token,
    )
    assert status == 200 and not reply["result"]["isError"]
    assert [i["sku"] for i in reply["result"]["structuredContent"]["items"]] == ["CB-301", "CB-302"]


async def test_an_episode_driven_by_mcp_calls(start_server):
    served = await start_server(InventoryEnv)
    async with served.client() as env:
        await env.reset(task_id="record-sale")
        assert not (await env.call_tool("adjust_stock", sku="KB-101", delta=-2)).is_error
        assert (await env.call_tool("submit", answer="done")).text == "submitted; the task is over"
        state = await env.state()
        assert state["done"] and state["reward"] == 1.0 and state["stock"]["KB-101"] == 12
        late = await env.call_tool("get_item", sku="KB-101")
        assert late.is_error and "task is over" in late.text
        with pytest.raises(ExecutionError, match="call reset"):
            await env.step({"tool": "list_items"})


async def test_sessions_have_separate_warehouses(start_server):
    served = await start_server(InventoryEnv)
    async with served.client() as first, served.client() as second:
        await first.reset(task_id="record-sale")
        await second.reset(task_id="record-sale")
        await first.step({"tool": "adjust_stock", "arguments": {"sku": "KB-101", "delta": -2}})
        assert (await first.state())["stock"]["KB-101"] == 12
        assert (await second.state())["stock"] == INITIAL_STOCK


@pytest.mark.parametrize("task", ALL_TASKS, ids=lambda t: t.id)
async def test_oracle_solves_the_task_through_step(start_server, task):
    served = await start_server(InventoryEnv)
    async with served.client() as env:
        reset = await env.reset(task_id=task.id)
        assert reset.observation["prompt"] == task.prompt
        for text in task.oracle:
            result = await env.step(SUITE.parse_action(text))
            assert not result.observation["error"], result.observation["result"]
        assert result.done and result.reward == 1.0 and result.metadata == {"reason": "submitted"}


@pytest.mark.parametrize("spec", TASKS, ids=lambda t: t.id)
async def test_wrong_submissions_fail_the_rubric(start_server, spec):
    served = await start_server(InventoryEnv)
    async with served.client() as env:
        if spec.answer is not None:  # right stock, wrong answer; then right answer, stray stock change
            attempts = [
                ['submit {"answer": "12345"}'],
                [call_text("adjust_stock", sku="DK-501", delta=1), spec.task.oracle[-1]],
            ]
        else:  # submitted without changing the stock
            attempts = [[spec.task.oracle[-1]]]
        for attempt in attempts:
            await env.reset(task_id=spec.id)
            for text in attempt:
                result = await env.step(SUITE.parse_action(text))
            assert result.done and result.reward == 0.0


async def test_step_reports_mistakes_as_observations(start_server):
    served = await start_server(InventoryEnv, factory=functools.partial(InventoryEnv, max_steps=4))
    async with served.client() as env:
        await env.reset(task_id="monitor-stock")
        unknown = await env.step({"tool": "teleport", "arguments": {}})
        assert unknown.observation["error"] and unknown.observation["result"].startswith("unknown tool 'teleport'")
        bad = await env.step({"tool": "adjust_stock", "arguments": {"sku": "KB-101"}})
        assert bad.observation["error"] and bad.observation["result"].startswith("bad arguments for 'adjust_stock'")
        missing = await env.step({"tool": "get_item", "arguments": {"sku": "nope"}})
        assert missing.observation == {
            "result": "UnknownSkuError: no item has SKU 'nope'; list_items shows every SKU",
            "error": True,
            "prompt": "",
            "metadata": {},
        }
        with pytest.raises(MessageValidationError):
            await env.step({"tool": "list_items", "args": {}})
        last = await env.step({"tool": "list_items"})
        assert last.done and last.reward == 0.0 and last.metadata == {"reason": "max_steps"}
        assert [i["sku"] for i in json.loads(last.observation["result"])["items"]] == list(INITIAL_STOCK)


def test_parse_and_render():
    assert SUITE.parse_action('  get_item {"sku": "KB-101"}\n') == {"tool": "get_item", "arguments": {"sku": "KB-101"}}
    assert SUITE.parse_action("list_items") == {"tool": "list_items", "arguments": {}}
    assert SUITE.parse_action('get_item{"sku":"X"}') == {"tool": "get_item", "arguments": {"sku": "X"}}
    assert SUITE.parse_action('search\n{\n  "query": "usb"\n}') == {"tool": "search", "arguments": {"query": "usb"}}
    for bad in ("", "get_item {sku: KB-101}", 'get_item ["KB-101"]', "{}", "two words"):
        with pytest.raises(ActionParseError):
            SUITE.parse_action(bad)
    assert SUITE.render_observation({"result": '{"items": []}', "error": False, "prompt": ""}) == '{"items": []}'
