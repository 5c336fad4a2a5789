"""One rule for where every `hillclimb` command finds an environment's modules: the working
directory first, then the installed packages (as `python -m` does).

Each command runs as the `hillclimb` script does: `python -P` puts no directory of its own on
`sys.path` (`python -m` alone would put the working directory there and hide a command that
forgot it). The module it is pointed at ends the command the moment it is imported, saying so:
that each command got that far is the point, and nothing slow (Ray, a sandbox) starts.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from tests.trainers.chat_server import ChatServer

MARKER = "imported cwd_env from the working directory"
KEY = "sk-cwd-test"


def _environ(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "COLUMNS": "300", **extra}


async def _hillclimb(*args: str, cwd: Path, **env: str) -> tuple[int, str]:
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-P", "-m", "orchestrator", *args, cwd=cwd, env=_environ(**env),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(child.communicate(), 120)
    return child.returncode or 0, " ".join(out.decode(errors="replace").split())


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A user's project directory holding the module `cwd_env`, which announces its import."""
    (tmp_path / "cwd_env.py").write_text(f"raise SystemExit({MARKER!r})\n")
    config = f"run: {{dir: {tmp_path / 'runs'}, metrics_port: null}}\nenv: {{name: 'cwd_env:ENVIRONMENT'}}\n"
    (tmp_path / "run.yaml").write_text(config + "policy: {type: hf}\n")
    return tmp_path


@pytest.mark.parametrize(
    "args",
    [
        ["env", "serve", "cwd_env:ENVIRONMENT"],
        ["env", "demo", "cwd_env:ENVIRONMENT"],
        ["rollout", "run.yaml"],
        ["train", "run.yaml"],
        ["eval", "cwd_env:ENVIRONMENT", "-m", "fake-chat"],
    ],
    ids=lambda args: " ".join(args[:2]),
)
async def test_every_command_imports_an_environment_from_the_working_directory(project: Path, args: list[str]) -> None:
    server = ChatServer(api_key=KEY)  # what `eval` checks before it looks at the environment
    base_url = await server.start()
    try:
        code, out = await _hillclimb(*args, cwd=project, OPENAI_BASE_URL=base_url, OPENAI_API_KEY=KEY)
    finally:
        await server.close()
    assert (code, MARKER) == (1, out[-len(MARKER) :]), out[-3000:]


async def test_a_module_found_nowhere_names_itself_and_how_to_make_it_importable(tmp_path: Path) -> None:
    code, out = await _hillclimb("env", "demo", "nowhere_env:ENVIRONMENT", cwd=tmp_path)
    assert code == 2, out
    assert (
        f"error: EnvModuleNotFoundError: cannot import 'nowhere_env' for environment 'nowhere_env:ENVIRONMENT': "
        f"no module named 'nowhere_env' in the working directory ({tmp_path}) or among the packages installed in "
        f"{sys.prefix}. Run hillclimb from the directory that holds nowhere_env (your project's), or install your "
        "project into this Python: `pip install -e <project directory>`" in out
    )
