"""The README and docs/ keep their word: every shell command in them is run or says why not, every
link leads somewhere, and the site builds with `mkdocs build --strict`.

A fenced ```bash, ```sh or ```console block has, on the last non-blank line before it, one marker:
- `<!-- not run: REASON -->`: why no test runs it (a cluster, a cloud account, a command that
  serves until stopped);
- `<!-- tested by: tests/x.py::test_name, ... -->`: the tests that run what it shows; each named
  test must exist. Blocks naming `tests/test_docs.py::test_cheap_blocks_run` are cheap and safe
  (help, listings), and that test runs them in bash from the repository root.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELLS = {"bash", "sh", "console"}
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)")
MARKER = re.compile(r"^<!-- (?P<kind>not run|tested by): (?P<what>.*?) -->$")
CHEAP = "tests/test_docs.py::test_cheap_blocks_run"
VENV_BIN = Path(sys.executable).parent  # the venv running the tests: where `hillclimb` is


@dataclasses.dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    lang: str
    body: str
    marker: str  # the last non-blank line before the fence, stripped

    def __str__(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def fenced_blocks(page: Path) -> list[Block]:
    lines = page.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == fence), len(lines))
        body = "\n".join(line.removeprefix(indent) for line in lines[i + 1 : end])
        before = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        blocks.append(Block(page, i + 1, opening["lang"], body, before))
        i = end + 1
    return blocks


SHELL_BLOCKS = [b for page in PAGES for b in fenced_blocks(page) if b.lang in SHELLS]


def named_tests(marker: str) -> list[str]:
    found = MARKER.match(marker)
    return [t.strip() for t in found["what"].split(",")] if found and found["kind"] == "tested by" else []


def is_defined(node: str) -> bool:
    """Whether `tests/x.py::test_name` (or `::Class::test_name`, a parameter id allowed) is defined."""
    path, *names = node.split("[", 1)[0].split("::")
    file = REPO / path
    if not file.is_file() or not names:
        return False
    scope: list[ast.stmt] = ast.parse(file.read_text()).body
    for name in names:
        kinds = ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef
        found = [n for n in scope if isinstance(n, kinds) and n.name == name]
        if not found:
            return False
        scope = found[0].body if isinstance(found[0], ast.ClassDef) else []
    return True


def test_every_shell_block_is_run_or_says_why_not() -> None:
    unmarked = [str(b) for b in SHELL_BLOCKS if not (m := MARKER.match(b.marker)) or not m["what"].strip()]
    assert not unmarked, f"shell blocks without `<!-- not run: why -->` or `<!-- tested by: test -->`: {unmarked}"
    missing = [f"{b}: {node}" for b in SHELL_BLOCKS for node in named_tests(b.marker) if not is_defined(node)]
    assert not missing, f"markers naming tests that do not exist: {missing}"


@pytest.mark.parametrize("block", [b for b in SHELL_BLOCKS if CHEAP in named_tests(b.marker)], ids=str)
def test_cheap_blocks_run(block: Block) -> None:
    # `.venv/bin/` in the docs is the checkout's venv: here, whichever venv runs the tests.
    script = block.body.replace(".venv/bin/", f"{VENV_BIN}/")
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", "COLUMNS": "120"}
    done = subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + script], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"{block} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"


def test_ci_runs_the_readme_commands() -> None:
    """The README's first block is the two set-up commands: CI runs its test command, and its run
    command is the main job that tests/e2e/test_main_job.py runs shortened."""
    first = next(b for b in SHELL_BLOCKS if b.page.name == "README.md")
    commands = [line.split("#", 1)[0].strip() for line in first.body.splitlines()]
    assert commands == ["make run", "make test"]
    ci = [line for line in (REPO / ".ci/run").read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert ci[-1] == "make test"
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^run: venv\n\t\$\(BIN\)/hillclimb train configs/echo_toy\.yaml$", makefile, re.M)
    assert '"configs/echo_toy.yaml"' in (REPO / "tests/e2e/test_main_job.py").read_text()


def slug(heading: str) -> str:
    """A heading's anchor, as mkdocs' toc and GitHub make it for the headings these pages use."""
    return re.sub(r"[\s]+", "-", re.sub(r"[^\w\s-]", "", heading.strip().lower()))


def test_the_readmes_links_lead_to_files_and_headings() -> None:
    readme = (REPO / "README.md").read_text()
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", readme):
        if re.match(r"^[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        file = REPO / (path or "README.md")  # "#heading": a heading of the README itself
        headings = re.findall(r"^#+ (.+)$", file.read_text(), re.M) if anchor and file.is_file() else []
        if not file.exists() or (anchor and anchor not in {slug(h) for h in headings}):
            broken.append(target)
    assert not broken, f"README.md links to what is not there: {broken}"


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    """Any warning (a broken link, a page left out of the nav) fails a strict build."""
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "index.html").exists()
