"""A user's virtual environment for the tutorial's tests, and the tutorial as docs/tutorial.md writes it.

`layered_venv` makes a venv whose Python also sees this checkout's venv (hillclimb, pip, pytest)
without a copy of it, and which gets what `pip install` adds. What a user installed editable into
the checkout's venv beside hillclimb (the tutorial's own `pip install -e .`) stays out of it:
the tutorial then runs as it would on a fresh checkout.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).parents[1]


def tutorial_block() -> str:
    """The first bash block of docs/tutorial.md, verbatim."""
    tutorial = (REPO / "docs" / "tutorial.md").read_text()
    return tutorial.split("```bash\n", 1)[1].split("\n```", 1)[0]


def layered_venv(path: Path) -> Path:
    """A venv over the running Python's site-packages; its bin/ holds `hillclimb`, `pytest` and `pip`."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    (site,) = path.glob("lib/python*/site-packages")
    base = sysconfig.get_paths()["purelib"]  # the test suite's venv, where hillclimb is installed
    # Its .pth files (hillclimb's editable finder, setuptools' shim, a layer below this one), but
    # no other project's editable install.
    kept = sorted(
        p.name
        for p in Path(base).glob("*.pth")
        if not p.name.startswith("__editable__.") or p.name.startswith("__editable__.hillclimb-")
    )
    # One line, run by `exec` in site.addpackage: a comprehension there sees no name imported before it.
    load = (
        f"import sys; sys.path.append({base!r}); [__import__('site').addpackage({base!r}, n, None) for n in {kept!r}]"
    )
    (site / "hillclimb-base.pth").write_text(load + "\n")
    # pip offline: no index, and no build isolation (which would fetch setuptools from one).
    # Set for this `pip` alone: `hillclimb image build` resolves hillclimb's wheels as usual.
    offline = "PIP_NO_INDEX=1 PIP_NO_BUILD_ISOLATION=0 "  # pip's spelling of --no-build-isolation
    # -P: no directory of the script's own on sys.path, as their console scripts run.
    for command, run in (("hillclimb", "-P -m orchestrator"), ("pytest", "-P -m pytest"), ("pip", "-m pip")):
        script = path / "bin" / command
        script.write_text(f'#!/bin/sh\n{offline if command == "pip" else ""}exec "{path}/bin/python" {run} "$@"\n')
        script.chmod(0o755)
    return path
