"""`InventoryEnv`: a warehouse behind MCP tools, also drivable step by step for RL rollouts.

Two doors to the same tools: `tools/call` (MCP, over the WebSocket `mcp` message or
`POST /mcp`) and `step({"tool": ..., "arguments": {...}})`. Both validate arguments
against the tool's signature and show a tool's failure to the agent as text: an MCP
result with `isError`, or an observation with `error=True`. Only `step` counts toward
`max_steps`. The methods are sync on purpose: the server runs them on the session's
thread, and a TRL-style harness can call them directly.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pydantic
from pydantic import Field

from envs.authoring.base import Action, Environment, Observation, State, tool, tool_methods
from envs.builtin.inventory.tasks import SUITE, InventoryTask
from envs.builtin.inventory.warehouse import InventoryError, Warehouse
from hillclimb.errors import ExecutionError, validation_problems


class InventoryAction(Action):
    tool: str
    """The name of a tool, as listed by tools/list."""
    arguments: dict[str, Any] = Field(default_factory=dict)
    """The tool's arguments by name."""


class InventoryObservation(Observation):
    result: str = ""
    """The tool's result: JSON text, or the error message when `error` is set."""
    error: bool = False
    """The call failed (unknown tool, bad arguments, or the tool raised); nothing changed."""
    prompt: str = ""
    """The task prompt on the reset observation; empty on every step."""


class InventoryState(State):
    task_id: str | None = None
    """None until the first reset."""
    done: bool = False
    reward: float | None = None
    """Set by submit: 1.0 if the rubric passed, else 0.0."""
    stock: dict[str, int] = Field(default_factory=dict)
    """Units on hand per SKU, now."""
    max_steps: int = Field(ge=1)


class InventoryEnv(Environment[InventoryAction, InventoryObservation, InventoryState]):
    """A small in-memory warehouse (ten SKUs, four categories) managed through MCP tools.

    Tasks ask questions about the stock or ask for stock changes; `submit` ends the task
    and scores it against the final stock and the answer.
    """

    SUPPORTS_CONCURRENT_SESSIONS = True

    def __init__(self, max_steps: int = 20) -> None:
        self.max_steps = max_steps
        self._warehouse = Warehouse()
        self._task: InventoryTask | None = None
        self._state = InventoryState(max_steps=max_steps)

    def reset(
        self, seed: int | None = None, episode_id: str | None = None, task_id: str | None = None
    ) -> InventoryObservation:
        """Start an episode on `task_id`, or on a train task drawn by `seed` when none is named."""
        self._task = SUITE.pick(task_id, seed)
        self._warehouse = Warehouse()
        self._state = InventoryState(
            episode_id=episode_id or uuid.uuid4().hex, task_id=self._task.id, max_steps=self.max_steps
        )
        return InventoryObservation(prompt=self._task.task.prompt, metadata={"task_id": self._task.id})

    def step(self, action: InventoryAction, timeout_s: float | None = None) -> InventoryObservation:
        if self._task is None or self._state.done:
            raise ExecutionError("no episode in progress: call reset() first")
        self._state.step_count += 1
        result, error = self._call(action.tool, action.arguments)
        reason = "submitted" if self._state.done else None
        if reason is None and self._state.step_count >= self.max_steps:
            self._state.done, self._state.reward, reason = True, 0.0, "max_steps"
        if reason is None:
            return InventoryObservation(result=result, error=error)
        return InventoryObservation(
            result=result, error=error, done=True, reward=self._state.reward, metadata={"reason": reason}
        )

    def _call(self, name: str, arguments: dict[str, Any]) -> tuple[str, bool]:
        tools = tool_methods(self)
        if name not in tools:
            return f"unknown tool {name!r}; tools are {', '.join(tools)}", True
        try:
            value = tools[name](**arguments)
        except pydantic.ValidationError as e:
            return f"bad arguments for {name!r}: {validation_problems(e)}", True
        except InventoryError as e:
            # The same text an MCP client sees for a failed tools/call.
            return f"{type(e).__name__}: {e}", True
        return value if isinstance(value, str) else json.dumps(value), False

    @property
    def state(self) -> InventoryState:
        return self._state.model_copy(update={"stock": self._warehouse.stock})

    def _check_open(self) -> None:
        if self._state.done:
            raise InventoryError("the task is over (submitted or out of steps): call reset() for a new one")

    # -- tools -------------------------------------------------------------------------

    @tool
    @pydantic.validate_call
    def list_items(self, category: str | None = None) -> dict[str, Any]:
        """List every item (SKU, name, category, price in dollars, units in stock), or only those of one category."""
        self._check_open()
        return {"items": [item.model_dump() for item in self._warehouse.items(category)]}

    @tool
    @pydantic.validate_call
    def get_item(self, sku: str) -> dict[str, Any]:
        """Look up one item by its SKU, such as "KB-101"."""
        self._check_open()
        return self._warehouse.get(sku).model_dump()

    @tool
    @pydantic.validate_call
    def search(self, query: str) -> dict[str, Any]:
        """Find items whose name or SKU contains `query`, ignoring case."""
        self._check_open()
        return {"items": [item.model_dump() for item in self._warehouse.search(query)]}

    @tool
    @pydantic.validate_call
    def adjust_stock(self, sku: str, delta: int) -> dict[str, Any]:
        """Change an item's units in stock by `delta` (negative to remove); returns the updated item."""
        self._check_open()
        return self._warehouse.adjust(sku, delta).model_dump()

    @tool
    @pydantic.validate_call
    def submit(self, answer: str) -> str:
        """Submit the final answer (or "done" for a task that only changes stock). Ends the task."""
        self._check_open()
        if self._task is None:
            raise InventoryError("there is no task to submit: the episode must start with reset(task_id=...)")
        self._state.done = True
        self._state.reward = self._task.score(answer, self._warehouse.stock)
        return "submitted; the task is over"
