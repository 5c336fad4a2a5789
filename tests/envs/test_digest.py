"""The environment-code digest that sandbox images are labelled with."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

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
    tasks = copy / "builtin" / "terminal" / "tasks.yaml"
    tasks.write_text(tasks.read_text() + "\n# one more line\n")
    changed_data = _digest_of_copy(tmp_path)
    assert changed_data != envs_digest()
    (copy / "builtin" / "toy_terminal" / "fs.py").write_text("# another file system\n")
    assert _digest_of_copy(tmp_path) not in (envs_digest(), changed_data)


def test_a_user_packages_digest_follows_its_code_and_task_files(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from envs.digest import directory_digest, package_digest

    package = tmp_path / "hc_digest_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "tasks.jsonl").write_text('{"id": "a", "split": "train", "prompt": "p"}\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    before = package_digest("hc_digest_pkg")
    assert before == directory_digest(package)  # what the image build labels, from the project directory
    (package / "tasks.jsonl").write_text('{"id": "b", "split": "train", "prompt": "p"}\n')
    assert package_digest("hc_digest_pkg") != before  # task suites in data files count
    with pytest.raises(ModuleNotFoundError, match="no package 'hc_no_such_pkg'"):
        package_digest("hc_no_such_pkg")
