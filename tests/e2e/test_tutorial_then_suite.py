"""The tutorial installs its package into the venv it runs in: the checkout's own `.venv`, where
`make venv && source .venv/bin/activate` leaves a user. The tests pass beside it all the same.

A venv layered over the test suite's stands for that `.venv` (tests/user_venv.py). The tutorial's
lines up to its `pip install -e .` scaffold `demo_env` and install it there; then, with that
venv's Python, run the tests that meet installed environment packages (entry-point discovery,
`env init`; not the Ray rollout, for its minutes) and the first line of the tutorial again, in a
venv layered over that one as `test_tutorial.py` layers one over the checkout's.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.user_venv import REPO, layered_venv, tutorial_block

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

SUITES = ["tests/envs/test_env_packages.py", "tests/envs/test_scaffold.py", "tests/orchestrator/test_env_init.py"]


def _until_the_install() -> str:
    lines = tutorial_block().splitlines()
    install = next(i for i, line in enumerate(lines) if line.startswith("pip install -e ."))
    return "\n".join(lines[: install + 1])


def _run(command: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    return done.stdout


def test_the_suite_passes_beside_the_tutorials_install(tmp_path: Path) -> None:
    home = tmp_path / "user"
    home.mkdir()
    again = tmp_path / "again"  # a venv, and where its `env init` writes
    for directory in (tmp_path, home):
        directory.chmod(0o755)  # local sandboxes' own uids run this venv's Python from here
    venv = layered_venv(tmp_path / "venv")
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")},
        "PATH": f"{venv}/bin:{os.environ['PATH']}",
        "VIRTUAL_ENV": str(venv),
    }
    _run(["bash", "-c", "set -euo pipefail\n" + _until_the_install()], home, env)
    seen = "import demo_env, importlib.metadata as m; print(*(e.name for e in m.entry_points(group='hillclimb.envs')))"
    assert _run([f"{venv}/bin/python", "-c", seen], home, env).split() == ["demo_env"]

    out = _run(
        [f"{venv}/bin/python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not ray", *SUITES], REPO, env
    )
    assert " passed" in out.splitlines()[-1], out[-3000:]
    # The tutorial's first line once more, in a venv layered over this one, as on a fresh checkout.
    layer = f"from pathlib import Path; from tests.user_venv import layered_venv; layered_venv(Path({str(again)!r}))"
    _run([f"{venv}/bin/python", "-c", layer], REPO, env)
    _run([f"{again}/bin/hillclimb", "env", "init", "demo_env"], again, env)
