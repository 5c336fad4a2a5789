"""terminal: a real bash per episode. Every task's verifier passes its oracle and fails an
idle submit (and some plausible wrong solutions); commands are bounded in time and output,
stderr is shown, and each episode lives in its own directory."""

from __future__ import annotations

import asyncio
import ctypes
import functools
import os
import time
from pathlib import Path

import pytest

from envs.authoring.registry import load_suite, resolve_env_class
from envs.authoring.tasks import ActionParseError
from envs.builtin import terminal
from envs.builtin.terminal import TerminalEnv
from envs.builtin.terminal.tasks import SUITE, TerminalTask
from envs.client.ws_client import EnvClient
from envs.sandbox.agent_commands import agent_commands
from hillclimb.errors import ExecutionError, MessageValidationError

ALL_TASKS = SUITE.tasks("train") + SUITE.tasks("heldout")

WRONG_SOLUTIONS = {
    "count-distinct": "uniq colors.txt | wc -l > count.txt",
    "count-errors": "grep -ci error server.log > errors.txt",
    "replace-localhost": "sed -i 's/localhost/127.0.0.1/' hosts.conf",
    "extract-emails": "cut -d, -f2 users.csv > emails.txt",
    "delete-tmp-files": "rm -f *.tmp",
    "dedupe-keep-order": "sort -u list.txt -o list.txt",
    "make-executable": "chmod +x run.sh && echo >> run.sh",
    "sort-numbers-desc": "sort -r numbers.txt > desc.txt",
    "strip-comments": "sed -i '/#/d' settings.conf",
    "best-score": "sed -n 2p scores.csv | cut -d, -f1 > best.txt",
}


@pytest.fixture(autouse=True)
def workdir_root(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "work"
    monkeypatch.setenv("HILLCLIMB_WORKDIR", str(root))
    return root


async def _play(env: EnvClient, task_id: str, commands: list[str]) -> list:
    results = [await env.reset(task_id=task_id)]
    for text in commands:
        results.append(await env.step(SUITE.parse_action(text)))
    return results


async def _episode(served, task_id: str, commands: list[str]) -> list:
    async with served.client() as env:
        return await _play(env, task_id, commands)


def test_suite_shape():
    assert len(SUITE.tasks("train")) >= 20 and len(SUITE.tasks("heldout")) >= 8
    assert len({t.id for t in ALL_TASKS}) == len(ALL_TASKS)
    assert set(WRONG_SOLUTIONS) <= {t.id for t in ALL_TASKS}
    assert load_suite("terminal") is SUITE
    assert resolve_env_class("terminal") is TerminalEnv
    assert terminal.__all__ == ["TerminalAction", "TerminalEnv", "TerminalObservation", "TerminalState"]


@pytest.mark.parametrize("task", ALL_TASKS, ids=lambda t: t.id)
async def test_oracle_passes_and_idle_submit_fails(start_server, task):
    served = await start_server(TerminalEnv)
    async with served.client() as env:
        solved = await _play(env, task.id, list(task.oracle))
        idle = await _play(env, task.id, ["submit"])
    assert solved[0].observation["prompt"] == task.prompt
    assert [r.observation["exit_code"] for r in solved[1:-1]] == [0] * (len(task.oracle) - 1)
    assert solved[-1].done and solved[-1].reward == 1.0, solved[-1].metadata["verifier_output"]
    assert idle[-1].done and idle[-1].reward == 0.0
    assert idle[-1].metadata["reason"] == "submitted" and idle[-1].metadata["verifier_exit_code"] != 0


@pytest.mark.parametrize(("task_id", "command"), sorted(WRONG_SOLUTIONS.items()))
async def test_plausible_wrong_solution_fails(start_server, task_id, command):
    served = await start_server(TerminalEnv)
    results = await _episode(served, task_id, [command, "submit"])
    assert results[1].observation["exit_code"] == 0
    assert results[-1].reward == 0.0


async def test_timeout_kills_the_command_quickly(start_server):
    served = await start_server(TerminalEnv, factory=functools.partial(TerminalEnv, command_timeout_s=0.5))
    started = time.monotonic()
    results = await _episode(served, "create-hello", ["echo before; sleep 100"])
    assert time.monotonic() - started < 30  # not the 100 s sleep
    assert results[1].observation["output"] == "before\n[timed out after 0.5 s]\n"
    assert results[1].observation["exit_code"] is None


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead, just not yet reaped by init


async def test_background_jobs_do_not_outlive_their_command(start_server):
    served = await start_server(TerminalEnv)
    results = await _episode(served, "create-hello", ["sleep 100 & echo $!"])
    assert results[1].observation["exit_code"] == 0  # returned at once: the job does not hold the output open
    pid = int(results[1].observation["output"])
    deadline = time.monotonic() + 30  # SIGKILL to the command's process group is delivered asynchronously
    while _running(pid) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert not _running(pid)


async def test_output_is_capped(start_server):
    served = await start_server(TerminalEnv)
    results = await _episode(served, "create-hello", ["yes | head -c 100000"])
    output = results[1].observation["output"]
    assert output == "y\n" * 8192 + "[output truncated: showing the first 16384 of 100000 bytes]\n"


async def test_stderr_and_exit_code_are_shown(start_server):
    served = await start_server(TerminalEnv)
    results = await _episode(served, "create-hello", ["echo out; echo oops >&2; exit 3", "cat nope.txt"])
    assert results[1].observation == {"output": "out\noops\n", "exit_code": 3, "prompt": "", "metadata": {}}
    assert SUITE.render_observation(results[1].observation) == "out\noops\n[exit 3]"
    assert results[2].observation["output"] == "cat: nope.txt: No such file or directory\n"


async def test_each_episode_gets_its_own_directory(start_server, workdir_root, monkeypatch):
    monkeypatch.setenv("HIDDEN_FROM_AGENT", "orchestrator-secret")
    served = await start_server(TerminalEnv)
    async with served.client() as env:
        await env.reset(task_id="rename-draft")
        first = (await env.state())["workdir"]
        pwd = await env.step({"command": "pwd; ls; env"})
        assert pwd.observation["output"].startswith(f"{first}\ndraft.txt\n")
        assert "orchestrator-secret" not in pwd.observation["output"]
        assert Path(first).parent == workdir_root
        await env.reset(task_id="sort-names")
        second = (await env.state())["workdir"]
        assert second != first and not os.path.exists(first)
        assert (await env.step({"command": "ls"})).observation["output"] == "names.txt\n"
    deadline = time.monotonic() + 30  # the server closes the session, and its directory, once it sees the close
    while os.path.exists(second) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert not os.path.exists(second)


async def test_a_work_dir_the_agent_locked_still_goes(start_server):
    served = await start_server(TerminalEnv)
    async with served.client() as env:
        await env.reset(task_id="rename-draft")
        first = (await env.state())["workdir"]
        lock = "mkdir -p a/b && touch a/b/f && chmod 000 a/b && chmod 500 a && chmod 500 . && echo locked"
        assert (await env.step({"command": lock})).observation["output"] == "locked\n"
        await env.reset(task_id="sort-names")
        assert not os.path.exists(first)


def test_a_server_whose_agent_shares_its_uid_is_not_dumpable():
    agent_commands()  # here, outside any sandbox: a warden of our own, under our uid
    assert ctypes.CDLL(None).prctl(3, 0, 0, 0, 0) == 0  # PR_GET_DUMPABLE: no ptrace, /proc files root's


async def test_an_agent_that_deletes_its_work_dir_sees_why_and_fails(start_server):
    served = await start_server(TerminalEnv)
    results = await _episode(served, "create-hello", ['rm -rf "$PWD"', "echo 'hello world' > hello.txt", "submit"])
    assert results[1].observation["exit_code"] == 0
    assert results[2].observation["output"].startswith("bash: cannot start in ")
    assert results[2].observation["exit_code"] == 126
    assert results[3].done and results[3].reward == 0.0


async def test_max_steps_submit_and_errors(start_server):
    served = await start_server(TerminalEnv, factory=functools.partial(TerminalEnv, max_steps=2))
    async with served.client() as env:
        with pytest.raises(MessageValidationError, match="task_id"):
            await env.reset(task_id="nope")
        await env.reset(task_id="create-hello")
        with pytest.raises(MessageValidationError):
            await env.step({"command": 1})
        await env.step({"command": "true"})
        last = await env.step({"command": "echo 'hello world' > hello.txt"})
        assert last.done and last.reward == 0.0 and last.metadata == {"reason": "max_steps"}
        with pytest.raises(ExecutionError, match="call reset"):
            await env.step({"command": "submit"})
        state = await env.state()
        assert state["done"] and state["step_count"] == 2 and state["task_id"] == "create-hello"


async def test_serves_over_a_unix_socket(start_server):
    served = await start_server(TerminalEnv, unix=True)
    async with served.client() as env:
        first = await env.reset(seed=7)
        assert first.observation["prompt"] in {t.prompt for t in SUITE.tasks("train")}
        assert (await env.step({"command": "echo hi"})).observation["output"] == "hi\n"


def test_parse_and_render():
    assert SUITE.parse_action("  ls -la \n") == {"command": "ls -la"}
    assert SUITE.parse_action("```bash\nmkdir a\ncd a && touch b\n```") == {"command": "mkdir a\ncd a && touch b"}
    assert SUITE.parse_action("```\necho hi\n```") == {"command": "echo hi"}
    for empty in ("", "  \n ", "```bash\n\n```"):
        with pytest.raises(ActionParseError):
            SUITE.parse_action(empty)
    assert SUITE.render_observation({"output": "x\n", "exit_code": 0}) == "x\n"
    assert SUITE.render_observation({"output": "no newline", "exit_code": 2}) == "no newline\n[exit 2]"
    assert SUITE.render_observation({"output": "", "exit_code": 1}) == "[exit 1]"
    assert SUITE.render_observation({"output": "t\n", "exit_code": None}) == "t\n"


def test_task_paths_must_stay_inside_the_work_dir():
    for bad in ("../escape.txt", "/etc/passwd"):
        with pytest.raises(ValueError, match="relative"):
            TerminalTask(id="x", split="train", prompt="p", files={bad: ""}, verify="true", oracle=("true",))
