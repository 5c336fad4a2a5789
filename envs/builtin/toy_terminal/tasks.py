"""The toy terminal's task suite: questions about its five files, answered with `answer: X`.

This is the world-model testbed. The train split reads every file with `cat` (plus some
grep / wc / head, and a few hundred templated drills of every command form, see `drills`),
so a model that learns the environment's outputs has seen every byte; the held-out split
asks for *new commands* over the same files (other greps, tails, wc forms, grep -c/-n/-v
arguments), whose outputs are predictable only by modelling the files and the tools.
Each task's oracle is its commands followed by `answer: <answer>`; the rubric is exact
equality of the stripped answer.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from envs.authoring.tasks import ActionParseError, Task, TaskBook
from envs.builtin.toy_terminal.drills import drills, held_out
from hillclimb.splits import Split

ANSWER_PREFIX = "answer:"

PREAMBLE = "Shell: ls, cat F, grep [-cinv] P F, wc [-lwc] F, head/tail -n N F. Then `answer: X`."


class ToyTask(BaseModel):
    """A question, the commands that reveal its answer, and the answer itself (the rubric)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    split: Split
    question: str
    commands: tuple[str, ...] = Field(min_length=1)
    """Commands whose outputs contain what is needed to answer."""
    answer: str
    """The exact expected value; `answer: X` earns 1.0 iff X (stripped) equals it."""

    @cached_property
    def task(self) -> Task:
        oracle = (*self.commands, f"{ANSWER_PREFIX} {self.answer}")
        return Task(id=self.id, split=self.split, prompt=f"{PREAMBLE}\n\nQuestion: {self.question}", oracle=oracle)


def _t(split: Split, id: str, commands: tuple[str, ...], answer: str, question: str) -> ToyTask:
    return ToyTask(id=id, split=split, question=question, commands=commands, answer=answer)


TASKS: tuple[ToyTask, ...] = (
    # -- train: every file in full, plus grep / wc / head / ls ----------------------------
    _t(
        "train",
        "cat-app-order",
        ("cat app.log",),
        "1042",
        "Which order number had payment gateway timeouts (see app.log)? Answer with the number.",
    ),
    _t(
        "train",
        "cat-server-payments",
        ("cat server.log",),
        "500",
        "What HTTP status did POST /api/payments return in server.log? Answer with the number.",
    ),
    _t(
        "train",
        "cat-config-port",
        ("cat config.yaml",),
        "8080",
        "Which port does the server listen on according to config.yaml? Answer with the number.",
    ),
    _t(
        "train",
        "cat-users-admins",
        ("cat users.csv",),
        "2",
        "How many users in users.csv have the role admin? Answer with a number.",
    ),
    _t(
        "train",
        "cat-notes-backup",
        ("cat notes.txt",),
        "02:00",
        "At what time does the backup job run, according to notes.txt? Answer as HH:MM.",
    ),
    _t("train", "ls-count", ("ls",), "5", "How many files are in the current directory? Answer with a number."),
    _t(
        "train",
        "grep-error-count",
        ("grep ERROR app.log",),
        "3",
        "How many ERROR lines does app.log contain? Answer with a number.",
    ),
    _t(
        "train",
        "grep-second-login",
        ('grep "logged in" app.log',),
        "bob",
        "Which user logged in second, according to app.log? Answer with the user name.",
    ),
    _t("train", "wc-app-lines", ("wc app.log",), "12", "How many lines does app.log have? Answer with a number."),
    _t(
        "train",
        "head-first-path",
        ("head -n 1 server.log",),
        "/api/orders",
        "Which path was requested first in server.log? Answer with the path.",
    ),
    _t(
        "train",
        "grep-todo-count",
        ("grep TODO notes.txt",),
        "2",
        "How many TODO items are in notes.txt? Answer with a number.",
    ),
    _t(
        "train",
        "grep-pool-size",
        ("grep pool_size config.yaml",),
        "10",
        "What is the database pool_size in config.yaml? Answer with the number.",
    ),
    _t(
        "train",
        "grep-dave-email",
        ("grep dave users.csv",),
        "dave@example.com",
        "What is dave's email address in users.csv?",
    ),
    _t("train", "wc-users-bytes", ("wc users.csv",), "252", "How many bytes is users.csv? Answer with a number."),
    # -- held-out: new commands over the same files ---------------------------------------
    _t(
        "heldout",
        "grep-warn-disk",
        ("grep WARN app.log",),
        "85%",
        "What disk usage percentage does app.log warn about? Answer like 50%.",
    ),
    _t(
        "heldout",
        "tail-last-status",
        ("tail -n 1 server.log",),
        "200",
        "What HTTP status did the last request in server.log get? Answer with the number.",
    ),
    _t(
        "heldout",
        "wc-l-user-rows",
        ("wc -l users.csv",),
        "6",
        "How many user rows (not counting the header) does users.csv have? Answer with a number.",
    ),
    _t(
        "heldout",
        "grep-inactive-developer",
        ("grep developer users.csv",),
        "carol",
        "Which developer in users.csv is inactive? Answer with the user name.",
    ),
    _t(
        "heldout",
        "head-app-version",
        ("head -n 3 config.yaml",),
        "2.4.1",
        "What version of the app does config.yaml declare?",
    ),
    _t(
        "heldout",
        "grep-404-path",
        ("grep 404 server.log",),
        "/api/orders/1042",
        "Which path returned 404 in server.log? Answer with the path.",
    ),
    _t(
        "heldout",
        "tail-metrics-port",
        ("tail -n 2 notes.txt",),
        "9090",
        "Which port is used for metrics, according to notes.txt? Answer with the number.",
    ),
    _t(
        "heldout",
        "grep-c-info",
        ("grep -c INFO app.log",),
        "7",
        "How many INFO lines does app.log contain? Answer with a number.",
    ),
    _t(
        "heldout",
        "grep-n-erin",
        ("grep -n erin users.csv",),
        "6",
        "On which line number of users.csv is erin? Answer with the number.",
    ),
    _t(
        "heldout",
        "grep-v-non-200",
        ("grep -v ' 200 ' server.log",),
        "4",
        "How many requests in server.log did not return 200? Answer with a number.",
    ),
)


def _with_drills(written: tuple[ToyTask, ...]) -> tuple[ToyTask, ...]:
    """The hand-written tasks plus the drills, none of whose training commands is a held-out one."""
    held = {c for t in written if t.split == "heldout" for c in t.commands}
    extra = []
    for id, command, question, answer in drills():
        if command in held:
            continue
        extra.append(_t("heldout" if held_out(command) else "train", id, (command,), answer, question))
    return written + tuple(extra)


TASKS = _with_drills(TASKS)


class ToyTerminalSuite:
    """`envs.authoring.tasks.TaskSuite` for `toy_terminal`."""

    env = "toy_terminal"
    shell_prompt = "$ "

    def __init__(self, tasks: tuple[ToyTask, ...]) -> None:
        self.book = TaskBook(self.env, tasks)

    def tasks(self, split: Split) -> list[Task]:
        return self.book.tasks(split)

    def pick(self, task_id: str | None, seed: int | None) -> ToyTask:
        """The task named `task_id`, else one drawn from the train split by `seed`."""
        return self.book.pick(task_id, seed)

    def parse_action(self, text: str) -> dict[str, Any]:
        """The first non-blank line of `text` is the command."""
        stripped = text.strip()
        if not stripped:
            raise ActionParseError("empty action: send one command, such as `ls`, or `answer: <value>`")
        return {"command": stripped.splitlines()[0].strip()}

    def render_observation(self, observation: dict[str, Any]) -> str:
        return observation["output"]


SUITE = ToyTerminalSuite(TASKS)
