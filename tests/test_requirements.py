"""What a test needs of the machine (root, a Docker engine) skips it on a laptop and fails it in CI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NEEDS_ROOT = """
import pytest

pytestmark = pytest.mark.root


def test_runs_a_sandbox() -> None:
    pass
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="drops to an unprivileged uid, which needs root")
@pytest.mark.parametrize(("required", "outcome"), [("", "1 skipped"), ("1", "1 error")])
def test_a_root_test_skips_without_root_and_fails_where_required(required: str, outcome: str) -> None:
    closed = [p for p in (REPO, Path(sys.prefix).resolve()) if _closed_to_others(p)]
    if closed:  # e.g. a clone under /root: another uid cannot even start this interpreter there
        pytest.skip(f"{closed[0]} is inside a directory other users cannot enter; clone elsewhere to run this")
    tmp_path = Path(tempfile.mkdtemp())  # pytest's tmp_path sits in a 0700 directory the other uid cannot enter
    os.chmod(tmp_path, 0o755)
    (tmp_path / "test_needs_root.py").write_text(NEEDS_ROOT)
    command = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest",
        "-c", str(REPO / "pyproject.toml"), "--rootdir", str(REPO), str(tmp_path / "test_needs_root.py"),
    ]  # fmt: skip
    environ = {**os.environ, "HILLCLIMB_REQUIRE_ROOT": required, "HOME": str(tmp_path)}
    try:
        done = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command],
            cwd=REPO,
            env=environ,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        shutil.rmtree(tmp_path)
    assert outcome in done.stdout, done.stdout[-2000:] + done.stderr[-2000:]


def _closed_to_others(path: Path) -> bool:
    """Whether some directory on the way to `path` denies other users entry."""
    return any(not os.stat(parent).st_mode & 0o001 for parent in [path, *path.parents])
