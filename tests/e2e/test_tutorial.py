"""The tutorial, docs/tutorial.md, executed as written, then what each
of its commands left behind.

The block runs in bash (`set -euo pipefail`) in an empty directory, as a user runs it, with:
- a virtual environment of its own layered over this checkout's (tests/user_venv.py: a `.pth` adds
  the test suite's site-packages, less any other project's editable install, such as an earlier
  tutorial's `demo_env`), so `pip install -e .` installs the user's package there and never in the
  test suite's; `hillclimb`, `pytest` and `pip` are its commands; its pip runs offline (no index,
  no build isolation);
- `OPENAI_BASE_URL` naming a chat server on loopback whose "model" replies with the last word of
  the task's prompt (the scaffold's tasks ask for one word), and a key it checks.
Then, on the same package: training on tasks without oracle actions, with no warm-up or anchor.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from tests.trainers.chat_server import ChatServer
from tests.user_venv import layered_venv, tutorial_block

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.root, pytest.mark.timeout(1200)]

KEY = "sk-tutorial-5c1e"
IMAGE = "demo-env:dev"


def _says_the_prompts_last_word(messages: list[dict[str, str]]) -> str:
    prompt = next(m["content"] for m in messages if m["role"] == "user")
    return prompt.split()[-1]


async def _bash(script: str, cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        "bash", "-c", "set -euo pipefail -x\n" + script, cwd=cwd, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await process.communicate()
    return process.returncode or 0, out.decode(errors="replace")


def _summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def _containers_created(image: str, since: float, until: float) -> list[str]:
    done = subprocess.run(
        ["docker", "events", "--since", f"{since:.0f}", "--until", f"{until + 1:.0f}", "--filter", "event=create",
         "--filter", f"image={image}", "--format", "{{.Actor.ID}}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout.split()


async def test_the_tutorial_runs_as_written(tmp_path: Path, docker_engine: None) -> None:
    home = tmp_path / "user"
    home.mkdir()
    for directory in (tmp_path, home):
        directory.chmod(0o755)  # local sandboxes' own uids read the package and the venv from here
    venv = layered_venv(tmp_path / "venv")
    server = ChatServer(_says_the_prompts_last_word, served_model="gpt-4.1-mini", api_key=KEY)
    base_url = await server.start()
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")},
        "PATH": f"{venv}/bin:{os.environ['PATH']}",
        "VIRTUAL_ENV": str(venv),
        "OPENAI_API_KEY": KEY,
        "OPENAI_BASE_URL": base_url,
        "COLUMNS": "200",
    }
    started = time.time()
    try:
        code, out = await _bash(tutorial_block(), home, env)
    finally:
        await server.close()
    ended = time.time()
    try:
        assert code == 0, out[-6000:]
        project = home / "demo_env"
        # pip installed the package into the tutorial's venv, not the test suite's.
        assert list(venv.glob("lib/python*/site-packages/demo_env-0.1.0.dist-info"))
        assert "12 passed" in out
        assert "[action] river" in out and "[reward] 1 (done=True)" in out  # env demo: the oracle's episode
        # eval: every task solved by the "model" behind OPENAI_BASE_URL, every episode written.
        rows = re.findall(r"│ (train|heldout)\s+│\s+(\d+)\s+│\s+\d+\s+│\s+([\d.]+)", out)
        assert sorted(rows) == [("heldout", "3", "1.000"), ("train", "6", "1.000")], out[-6000:]
        (run,) = (project / "runs").glob("eval-demo_env-gpt-4.1-mini-at-127.0.0.1-*")  # its endpoint in its name
        episodes = (run / "episodes.jsonl").read_text().splitlines()
        assert len(episodes) == 9 * 3 and all(json.loads(e)["reward"] == 1.0 for e in episodes)
        assert {r["model"] for r in server.requests} == {"gpt-4.1-mini"}
        # train, locally and in Docker: three RL steps each, a checkpoint, a summary.
        for name in ("demo_env", "demo_env-docker"):
            run = project / "runs" / name
            assert _summary(run)["rl_steps"] == 3, name
            assert (run / "checkpoints/step-000003").is_dir(), name
        assert json.loads((project / "runs/demo_env-docker/config.json").read_text())["provider"]["type"] == "docker"
        assert _containers_created(IMAGE, started, ended), "no container was made from the tutorial's image"
        assert "<ACTION>" in out and "<ENV>" in out  # runs show --plain: the episode with its roles
    finally:
        subprocess.run(["docker", "rmi", "-f", IMAGE], capture_output=True)
    # The same package without oracle actions trains too, with no warm-up and no anchor: the
    # env-token CE has nothing to measure, and says so by its absence.
    tasks = project / "demo_env/tasks.jsonl"
    rows = [json.loads(line) for line in tasks.read_text().splitlines()]
    tasks.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "oracle"}) + "\n" for r in rows))
    bare = textwrap.dedent("""\
        hillclimb train train.yaml --set run.name=no-oracle --set train.steps=1 \\
          --set train.warmup_steps=0 --set train.anchor_batch=0 --set train.eval_every=1
    """)
    code, out = await _bash(bare, project, env)
    assert code == 0, out[-6000:]
    summary = _summary(project / "runs/no-oracle")
    assert summary["rl_steps"] == 1 and summary["heldout_env_ce"]["final"] is None
    assert summary["heldout_pass1"]["final"] is not None
