"""`hillclimb eval` as a user runs it: the real CLI in a subprocess against a fake chat API on
loopback — pass@k per split, every episode's text, retries, the concurrency limit, the key kept
out of every file and log."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from envs.authoring.registry import load_suite
from tests.trainers.chat_server import ChatServer, Fault, toy_terminal_oracle

REPO = Path(__file__).parents[2]
KEY = "sk-eval-test-93d1"
HELDOUT = {t.id for t in load_suite("toy_terminal").tasks("heldout")}


@pytest.fixture
async def server() -> AsyncIterator[ChatServer]:
    server = ChatServer(toy_terminal_oracle(fail_tasks=HELDOUT), api_key=KEY)
    await server.start()
    yield server
    await server.close()


async def _eval(server: ChatServer, run_dir: Path, *args: str, key: str = KEY) -> tuple[int, str, str]:
    command = [sys.executable, "-m", "orchestrator", "eval", "toy_terminal", "-m", "fake-chat", "--base-url"]
    command += [server.base_url, "--api-key-env", "HC_EVAL_KEY", "--set", f"run.dir={run_dir}", *args]
    env = {**os.environ, "HC_EVAL_KEY": key, "COLUMNS": "200"}
    process = await asyncio.create_subprocess_exec(
        *command, cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=240)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


@pytest.mark.ray
@pytest.mark.root
@pytest.mark.slow
async def test_eval_prints_pass_at_k_and_writes_every_episode(server: ChatServer, tmp_path: Path) -> None:
    server.faults = [Fault(), Fault(429, {"Retry-After": "0.1"}), Fault(500)]  # the check passes; two episodes retry
    server.reply_delay_s = 0.05  # so episodes overlap at the server
    code, out, err = await _eval(
        server, tmp_path, "-n", "2", "-r", "3", "--set", "policy.max_concurrency=2", "--set", "policy.backoff_s=0.01"
    )
    assert code == 0, err[-3000:]
    rows = dict(re.findall(r"│ (train|heldout)\s+│\s+2\s+│\s+6\s+│\s+([\d.]+\s+│\s+[\d.]+\s+│\s+[\d.]+)", out))
    assert {split: row.split() for split, row in rows.items()} == {
        "train": ["1.000", "│", "1.000", "│", "1.000"],
        "heldout": ["0.000", "│", "0.000", "│", "0.000"],
    }
    assert "pass@1" in out and "pass@2" in out and "pass@3" in out

    port = server.base_url.split(":")[-1].removesuffix("/v1")
    run_dir = tmp_path / f"eval-toy_terminal-fake-chat-at-127.0.0.1-{port}"
    episodes = [json.loads(line) for line in (run_dir / "episodes.jsonl").read_text().splitlines()]
    assert len(episodes) == 2 * 2 * 3 and {e["split"] for e in episodes} == {"train", "heldout"}
    tasks = {t.id: t for split in ("train", "heldout") for t in load_suite("toy_terminal").tasks(split)}
    for e in episodes:
        task = tasks[e["task_id"]]
        assert e["prompt"] == task.prompt and e["done_reason"] in ("finished", "step_limit")
        assert e["reward"] == (0.0 if task.id in HELDOUT else 1.0)
        assert e["actions"] == (["answer: no idea"] if task.id in HELDOUT else list(task.oracle))
        assert len(e["observations"]) == len(e["actions"])
        assert e["untrainable"].startswith("the chat API returned text only")

    assert server.max_in_flight == 2
    turns = sum(len(e["actions"]) for e in episodes)
    assert len(server.requests) == 1 + turns + 2  # the check, every turn, two retries
    assert {h["Authorization"] for h in server.headers} == {f"Bearer {KEY}"}
    assert "retry 1/4" in out + err
    assert KEY not in out + err
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    assert json.loads((run_dir / "config.json").read_text())["policy"]["api_key_env"] == "HC_EVAL_KEY"

    # The same command again: it says first that it reuses every episode, and runs none.
    asked = len(server.requests)
    code, out, err = await _eval(server, tmp_path, "-n", "2", "-r", "3")
    assert code == 0, err[-3000:]
    said = " ".join(out.split())
    assert f"reusing all 12 episodes already in {run_dir}" in said and "nothing is run again" in said
    assert said.index("reusing all 12") < said.index("pass@1")
    assert len(server.requests) == asked + 1  # the key check only


async def test_a_wrong_key_stops_eval_at_once_in_one_line(server: ChatServer, tmp_path: Path) -> None:
    code, out, err = await _eval(server, tmp_path, "-n", "1", key="sk-wrong")
    assert code == 2
    message = " ".join((out + err).split())
    assert "refused the API key: check the key in $HC_EVAL_KEY" in message
    assert "Traceback" not in out + err and "sk-wrong" not in out + err
    assert len(server.requests) == 1 and list(tmp_path.iterdir()) == []
