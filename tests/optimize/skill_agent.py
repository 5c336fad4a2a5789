"""A deterministic chat agent for `hillclimb optimize` tests: whether it solves a toy_terminal task
depends only on what its system message (the skill) says.

It solves a task whose first oracle command runs program P (`cat`, `grep`, `wc`, ...) when the skill
shows P in code (`` `P `` followed by a space or a backtick, as a worked example writes it), and
plays the oracle then; a quarter of the tasks ("lucky" ones, fixed by their id) it solves anyway,
so that a bare agent has successes to learn from; when the skill holds `POISON` it solves nothing. Served by
tests/trainers/chat_server.py's ChatServer, so it is reached over real HTTP by the real rollout
workers; `seen` records, in order, the task of every request (a turn) it answered.
"""

from __future__ import annotations

import hashlib
from typing import Any

from envs.builtin.toy_terminal.tasks import SUITE

POISON = "POISON"
TASKS = {t.prompt: t for split in ("train", "heldout") for t in SUITE.tasks(split)}


def program(task_id: str) -> str:
    task = next(t for t in TASKS.values() if t.id == task_id)
    return task.oracle[0].split()[0]


def shows(skill: str, name: str) -> bool:
    return f"`{name} " in skill or f"`{name}`" in skill


def lucky(task_id: str) -> bool:
    return hashlib.blake2b(task_id.encode(), digest_size=1).digest()[0] % 4 == 0


def solves(skill: str, task_id: str) -> bool:
    return POISON not in skill and (lucky(task_id) or shows(skill, program(task_id)))


class SkillAgent:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, messages: list[dict[str, Any]]) -> str:
        system = next((m["content"] for m in messages if m["role"] == "system"), "")
        prompt = next(m["content"] for m in messages if m["role"] == "user")
        task = TASKS.get(prompt)
        if task is None:  # the policy check before a run
            return "OK"
        self.seen.append(task.id)
        if not solves(system, task.id):
            return "answer: no idea"
        turn = sum(1 for m in messages if m["role"] == "assistant")
        return task.oracle[min(turn, len(task.oracle) - 1)]
