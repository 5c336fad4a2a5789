"""The environment-code digest that sandbox images are labelled with."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import envs
from envs.digest import envs_digest

PACKAGE = Path(envs.__file__).parent
PROGRAM = "from envs.digest import envs_digest; print(envs_digest())"


def _digest_of_copy(root: Path) -> str:
    """The digest of the `envs` package copied under `root`, computed by a fresh interpreter there."""
    out = subprocess.run([sys.executable, "-c", PROGRAM], cwd=root, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_the_digest_follows_the_sources_and_task_data(tmp_path: Path) -> None:
    copy = tmp_path / "envs"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert len(envs_digest()) == 16 and _digest_of_copy(tmp_path) == envs_digest()  # same files, same digest
    (copy / "__pycache__").mkdir(exist_ok=True)
    (copy / "__pycache__" / "stray.cpython-311.pyc").write_bytes(b"compiled")
    assert _digest_of_copy(tmp_path) == envs_digest()  # byte code is not source
    tasks = copy / "terminal" / "tasks.yaml"
    tasks.write_text(tasks.read_text() + "\n# one more line\n")
    changed_data = _digest_of_copy(tmp_path)
    assert changed_data != envs_digest()
    (copy / "toy_terminal" / "fs.py").write_text("# another file system\n")
    assert _digest_of_copy(tmp_path) not in (envs_digest(), changed_data)
