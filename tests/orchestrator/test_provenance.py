"""A result is credited to the commit that measured it: dirty only where the code changed."""

from __future__ import annotations

import subprocess
from pathlib import Path

from orchestrator.provenance import RESULTS, commit


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def test_a_written_result_leaves_the_commit_clean_and_a_code_change_does_not(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / RESULTS).mkdir(parents=True)
    (tmp_path / RESULTS / "a.json").write_text("{}\n")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    head = _git(tmp_path, "rev-parse", "--short", "HEAD")
    (tmp_path / RESULTS / "a.json").write_text('{"measured": 1}\n')  # a benchmark wrote its result
    assert commit(tmp_path) == head
    (tmp_path / "code.py").write_text("x = 2\n")
    assert commit(tmp_path) == f"{head}-dirty"


def test_outside_a_checkout_the_commit_is_unknown(tmp_path: Path) -> None:
    assert commit(tmp_path) == "unknown"
