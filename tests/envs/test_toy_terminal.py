"""toy_terminal: the pretend shell matches GNU coreutils byte for byte, and every task's
oracle earns 1.0 end to end over a real WebSocket while a wrong answer earns 0.0."""

from __future__ import annotations

import asyncio
import functools
import subprocess

import pytest

from envs.authoring.registry import load_suite, resolve_env_class
from envs.authoring.tasks import ActionParseError
from envs.builtin import toy_terminal
from envs.builtin.toy_terminal import ToyTerminalEnv, fs
from envs.builtin.toy_terminal.tasks import SUITE, TASKS
from hillclimb.errors import ExecutionError, MessageValidationError

ALL_TASKS = SUITE.tasks("train") + SUITE.tasks("heldout")

# Beyond the oracles' commands: option forms and the errors a shell prints.
EXTRA_COMMANDS = [
    "ls notes.txt nope.txt app.log",
    "cat notes.txt nope.txt users.csv",
    "cat missing.txt",
    "grep -i port notes.txt",
    "grep -n -v INFO app.log",
    "grep -c nothing-matches app.log",
    "grep ERROR nope.log",
    "wc -lw config.yaml",
    "wc -c server.log",
    "wc -w notes.txt",
    "wc nope.txt",
    "head app.log",
    "head -n 0 notes.txt",
    "head -n3 server.log",
    "head -n x app.log",
    "tail -n 100 notes.txt",
    "tail -n 0 users.csv",
    "tail nope.txt",
]


def _gnu_output(directory: str, command: str) -> str:
    # The toy's grep matches plain substrings: that is GNU grep with -F.
    real = "grep -F" + command[4:] if command.startswith("grep ") else command
    done = subprocess.run(
        ["bash", "-c", real + " 2>&1"],
        cwd=directory,
        capture_output=True,
        text=True,
        env={"LC_ALL": "C", "PATH": "/usr/bin:/bin"},
        check=False,
    )
    return done.stdout


@pytest.mark.parametrize("command", sorted({c for t in ALL_TASKS for c in t.oracle[:-1]} | set(EXTRA_COMMANDS)))
def test_outputs_match_gnu_coreutils(tmp_path, command):
    for name, content in fs.FILES.items():
        (tmp_path / name).write_text(content)
    assert fs.execute(command) == _gnu_output(str(tmp_path), command)


@pytest.mark.parametrize(
    ("command", "output"),
    [
        ("foo --bar", "unknown command: foo\n"),
        ("", ""),
        ("cat", "cat: missing file operand\n"),
        ("grep ERROR", "usage: grep [-cinv] PATTERN FILE\n"),
        ("wc app.log server.log", "wc: extra operand 'server.log' (this shell takes one FILE)\n"),
        ("ls -l", "ls: invalid option -- 'l'\n"),
        ("head --lines=2 app.log", "head: unrecognized option '--lines'\n"),
        ("head -n", "head: option requires an argument -- 'n'\n"),
        ("grep ERROR app.log | wc -l", "syntax error: pipes, redirections and command lists are not supported\n"),
        ("cat app.log > copy.log", "syntax error: pipes, redirections and command lists are not supported\n"),
        ('grep "oops app.log', "syntax error: No closing quotation\n"),
    ],
)
def test_shell_errors_are_outputs(command, output):
    assert fs.execute(command) == output


def test_suite_shape():
    train, heldout = SUITE.tasks("train"), SUITE.tasks("heldout")
    assert len(train) >= 12 and len(heldout) >= 6
    assert len({t.id for t in ALL_TASKS}) == len(ALL_TASKS)
    assert load_suite("toy_terminal") is SUITE
    assert resolve_env_class("toy_terminal") is ToyTerminalEnv
    assert toy_terminal.__all__ == ["ToyTerminalAction", "ToyTerminalEnv", "ToyTerminalObservation", "ToyTerminalState"]
    # Train reads every file in full, so held-out observations are predictable from training.
    assert {f"cat {name}" for name in fs.FILES} <= {c for t in train for c in t.oracle}
    # Held-out asks for commands never seen in training.
    assert not {c for t in heldout for c in t.oracle[:-1]} & {c for t in train for c in t.oracle[:-1]}


async def _play(served, task_id: str, actions: list[str]) -> list:
    async with served.client() as env:
        results = [await env.reset(task_id=task_id)]
        for text in actions:
            results.append(await env.step(SUITE.parse_action(text)))
        return results


@pytest.mark.parametrize("task", ALL_TASKS, ids=lambda t: t.id)
async def test_oracle_earns_reward_and_wrong_answer_does_not(start_server, task):
    served = await start_server(ToyTerminalEnv)
    results = await _play(served, task.id, list(task.oracle))
    assert results[0].observation["prompt"] == task.prompt
    assert [r.done for r in results] == [False] * len(task.oracle) + [True]
    assert results[-1].reward == 1.0
    for result, command in zip(results[1:-1], task.oracle, strict=False):
        assert result.observation["output"] == fs.execute(command)
        assert result.observation["prompt"] == ""
    wrong = await _play(served, task.id, [*task.oracle[:-1], "answer: definitely wrong"])
    assert wrong[-1].done and wrong[-1].reward == 0.0
    assert wrong[-1].metadata == {"reason": "answered"}


async def test_same_commands_same_bytes_across_concurrent_sessions(start_server):
    served = await start_server(ToyTerminalEnv)
    commands = ["ls", "cat app.log", "grep -n WARN app.log", "wc users.csv", "tail -n 2 server.log", "nope"]
    first, second = await asyncio.gather(*(_play(served, "ls-count", commands) for _ in range(2)))
    outputs = [[r.observation["output"] for r in run] for run in (first, second)]
    assert outputs[0] == outputs[1]
    assert outputs[0][-1] == "unknown command: nope\n"


async def test_max_steps_ends_with_zero_reward(start_server):
    served = await start_server(ToyTerminalEnv, factory=functools.partial(ToyTerminalEnv, max_steps=2))
    async with served.client() as env:
        await env.reset(task_id="ls-count")
        first = await env.step({"command": "ls"})
        last = await env.step({"command": "cat notes.txt"})
        assert not first.done
        assert last.done and last.reward == 0.0 and last.metadata == {"reason": "max_steps"}
        assert last.observation["output"] == fs.FILES["notes.txt"]
        state = await env.state()
        assert state["done"] and state["step_count"] == 2 and state["task_id"] == "ls-count"
        with pytest.raises(ExecutionError, match="call reset"):
            await env.step({"command": "ls"})
        again = await env.reset(task_id="ls-count")  # the session survives the error
        assert not again.done


async def test_bad_schema_and_unknown_task_are_validation_errors(start_server):
    served = await start_server(ToyTerminalEnv)
    async with served.client() as env:
        with pytest.raises(MessageValidationError, match="task_id"):
            await env.reset(task_id="no-such-task")
        await env.reset(task_id="ls-count")
        with pytest.raises(MessageValidationError):
            await env.step({"cmd": "ls"})
        assert (await env.step({"command": "ls"})).observation["output"].startswith("app.log\n")


async def test_seeded_reset_picks_a_train_task_deterministically(start_server):
    served = await start_server(ToyTerminalEnv)
    train_prompts = {t.prompt for t in SUITE.tasks("train")}
    async with served.client() as env:
        prompts = [(await env.reset(seed=seed)).observation["prompt"] for seed in (3, 3, 4)]
        state = await env.state()
    assert prompts[0] == prompts[1] and set(prompts) <= train_prompts
    assert state["task_id"] in {t.id for t in TASKS if t.split == "train"}


def test_parse_and_render():
    assert SUITE.parse_action("  grep ERROR app.log  \nanything else") == {"command": "grep ERROR app.log"}
    assert SUITE.parse_action("\n\nanswer: 3\n") == {"command": "answer: 3"}
    with pytest.raises(ActionParseError):
        SUITE.parse_action(" \n\t ")
    assert SUITE.render_observation({"output": "a\nb\n", "prompt": ""}) == "a\nb\n"
