"""The inventory task suite: questions about the warehouse and stock changes, ended by `submit`.

A policy calls one tool per turn as `tool_name {"arg": value}` (JSON arguments; just the
name when there are none). The rubric of a task has two parts, both required: the final
stock (every SKU must end at `final_stock`, else at its initial level, so a question
task fails if the agent changed anything) and, where the task asks a question, the
submitted answer (numbers compare to the cent; text ignores case and outer spaces).
"""

from __future__ import annotations

import json
import re
from functools import cached_property
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from envs.authoring.tasks import ActionParseError, Task, TaskBook
from envs.builtin.inventory.warehouse import INITIAL_STOCK
from hillclimb.splits import Split

PREAMBLE = (
    "You manage a small warehouse through tools: list_items, get_item, adjust_stock, search and submit. "
    'Call one tool per turn as `tool_name {"argument": value}` (JSON arguments; just the name if there are none). '
    'Finish with `submit {"answer": "..."}`: numbers as plain numbers ("12.5"), names and SKUs as listed.'
)

_ACTION = re.compile(r"\A(?P<tool>[A-Za-z_]\w*)(?P<arguments>\s*\S.*)?\Z", re.DOTALL)


def call_text(tool: str, **arguments: Any) -> str:
    """The action text for a tool call, in the format `parse_action` reads."""
    return f"{tool} {json.dumps(arguments)}" if arguments else tool


class InventoryTask(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    split: Split
    question: str
    calls: tuple[str, ...] = Field(min_length=1)
    """Tool calls (action texts) that solve the task, before the submit."""
    answer: str | None = None
    """The expected answer; None for tasks judged only by the final stock (submit "done")."""
    final_stock: dict[str, int] = Field(default_factory=dict)
    """SKU -> units the task must leave; every other SKU must keep its initial stock."""

    @cached_property
    def task(self) -> Task:
        submit = call_text("submit", answer=self.answer if self.answer is not None else "done")
        prompt = f"{PREAMBLE}\n\nTask: {self.question}"
        return Task(id=self.id, split=self.split, prompt=prompt, oracle=(*self.calls, submit))

    def score(self, answer: str, stock: dict[str, int]) -> float:
        if stock != {**INITIAL_STOCK, **self.final_stock}:
            return 0.0
        return 1.0 if self.answer is None or _same_answer(answer, self.answer) else 0.0


def _number(text: str) -> float | None:
    try:
        return float(text.strip().lstrip("$").replace(",", ""))
    except ValueError:
        return None


def _same_answer(given: str, expected: str) -> bool:
    want, got = _number(expected), _number(given)
    if want is not None:
        return got is not None and abs(got - want) < 0.005
    return given.strip().casefold() == expected.strip().casefold()


def _t(split: Split, id: str, calls: tuple[str, ...], question: str, **rubric: Any) -> InventoryTask:
    return InventoryTask(id=id, split=split, question=question, calls=calls, **rubric)


_LIST_ALL = call_text("list_items")

TASKS: tuple[InventoryTask, ...] = (
    # -- train ----------------------------------------------------------------------------
    _t(
        "train",
        "monitor-stock",
        (call_text("search", query="monitor"),),
        "How many units of the 27-inch monitor are in stock?",
        answer="6",
    ),
    _t(
        "train",
        "cables-value",
        (call_text("list_items", category="cables"),),
        "What is the total stock value (price times units in stock) of the cables category?",
        answer="449.56",
    ),
    _t(
        "train",
        "cheapest-audio",
        (call_text("list_items", category="audio"),),
        "What is the SKU of the cheapest item in the audio category?",
        answer="SP-402",
    ),
    _t(
        "train",
        "most-stocked",
        (_LIST_ALL,),
        "Which item has the most units in stock? Submit its SKU.",
        answer="CB-301",
    ),
    _t(
        "train",
        "restock-low",
        (
            _LIST_ALL,
            *(
                call_text("adjust_stock", sku=sku, delta=10 - INITIAL_STOCK[sku])
                for sku in ("MS-102", "MN-202", "CB-302", "SP-402")
            ),
        ),
        'Restock every item with fewer than 5 units in stock to exactly 10 units, then submit "done".',
        final_stock={"MS-102": 10, "MN-202": 10, "CB-302": 10, "SP-402": 10},
    ),
    _t(
        "train",
        "record-sale",
        (call_text("search", query="keyboard"), call_text("adjust_stock", sku="KB-101", delta=-2)),
        'A customer just bought 2 mechanical keyboards. Record the sale in the stock, then submit "done".',
        final_stock={"KB-101": 12},
    ),
    _t(
        "train",
        "count-peripherals",
        (call_text("list_items", category="peripherals"),),
        "How many different items are in the peripherals category?",
        answer="4",
    ),
    _t("train", "total-units", (_LIST_ALL,), "How many units are in stock across all items together?", answer="93"),
    _t(
        "train",
        "webcam-price",
        (call_text("search", query="webcam"),),
        "What does the 1080p webcam cost, in dollars?",
        answer="49.95",
    ),
    # -- held-out -------------------------------------------------------------------------
    _t(
        "heldout",
        "headset-price",
        (call_text("search", query="headset"),),
        "What is the price of the noise-cancelling headset, in dollars?",
        answer="129",
    ),
    _t(
        "heldout",
        "displays-value",
        (call_text("list_items", category="displays"),),
        "What is the total stock value (price times units in stock) of the displays category?",
        answer="1617.94",
    ),
    _t(
        "heldout",
        "record-return",
        (call_text("search", query="webcam"), call_text("adjust_stock", sku="WC-601", delta=3)),
        'A customer returned 3 webcams in good condition. Put them back in stock, then submit "done".',
        final_stock={"WC-601": 14},
    ),
    _t(
        "heldout",
        "audio-to-twelve",
        (
            call_text("list_items", category="audio"),
            call_text("adjust_stock", sku="HD-401", delta=4),
            call_text("adjust_stock", sku="SP-402", delta=12),
        ),
        'Bring every item in the audio category to exactly 12 units in stock, then submit "done".',
        final_stock={"HD-401": 12, "SP-402": 12},
    ),
    _t("heldout", "priciest-item", (_LIST_ALL,), "What is the SKU of the most expensive item?", answer="MN-201"),
    _t(
        "heldout",
        "out-of-stock-name",
        (_LIST_ALL,),
        "Which item is out of stock? Submit its name.",
        answer="Desk speaker pair",
    ),
)


class InventorySuite:
    """`envs.authoring.tasks.TaskSuite` for `inventory`; a `ToolCallSuite`, so chat models may call its tools
    natively."""

    env = "inventory"

    def __init__(self, tasks: tuple[InventoryTask, ...]) -> None:
        self.book = TaskBook(self.env, tasks)

    def tasks(self, split: Split) -> list[Task]:
        return self.book.tasks(split)

    def pick(self, task_id: str | None, seed: int | None) -> InventoryTask:
        """The task named `task_id`, else one drawn from the train split by `seed`."""
        return self.book.pick(task_id, seed)

    def parse_action(self, text: str) -> dict[str, Any]:
        """`tool_name {"json": "arguments"}`, or just `tool_name`."""
        match = _ACTION.match(text.strip())
        if match is None:
            raise ActionParseError('expected a tool call: `tool_name {"argument": value}` or `tool_name`')
        raw = (match.group("arguments") or "").strip()
        try:
            arguments = json.loads(raw) if raw else {}
        except json.JSONDecodeError as e:
            raise ActionParseError(f"the arguments of {match.group('tool')} are not valid JSON: {e}") from None
        if not isinstance(arguments, dict):
            raise ActionParseError(f"the arguments of {match.group('tool')} must be a JSON object, not {raw}")
        return {"tool": match.group("tool"), "arguments": arguments}

    def render_observation(self, observation: dict[str, Any]) -> str:
        return observation["result"]

    def tool_call_text(self, name: str, arguments: str) -> str:
        """A chat model's native call, as the text `parse_action` reads (which checks the JSON)."""
        arguments = arguments.strip()
        return name if arguments in ("", "{}") else f"{name} {arguments}"


SUITE = InventorySuite(TASKS)
