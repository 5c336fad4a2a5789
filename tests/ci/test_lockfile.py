"""The dependency lock answers pyproject.toml, and the check catches each way it can stop doing so."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TORCH_PIN = re.search(r"^TORCH_PIN \?= (\S+)$", (REPO / "Makefile").read_text(), re.M).group(1)  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def lockfile():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("lockfile", REPO / ".ci" / "lockfile.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_lock_answers_pyproject(lockfile) -> None:  # type: ignore[no-untyped-def]
    assert lockfile.problems(lockfile.LOCK.read_text(), lockfile.dependency_lists(), TORCH_PIN) == []


def test_a_changed_range_needs_a_new_lock(lockfile) -> None:  # type: ignore[no-untyped-def]
    lists = lockfile.dependency_lists()
    lists["train"] = [r if not r.startswith("transformers") else "transformers>=4.46" for r in lists["train"]]
    found = lockfile.problems(lockfile.LOCK.read_text(), lists, TORCH_PIN)
    assert found == ["pyproject.toml's dependencies (or TORCH_PIN) changed since the lock was made"]


def test_a_pin_outside_its_range_and_a_missing_package_are_named(lockfile) -> None:  # type: ignore[no-untyped-def]
    text = lockfile.LOCK.read_text()
    version = re.search(r"^transformers==(\S+)", text, re.M).group(1)  # type: ignore[union-attr]
    text = text.replace(f"transformers=={version}", "transformers==4.0.0").replace("\nruff==", "\nnot-ruff==")
    found = lockfile.problems(text, lockfile.dependency_lists(), TORCH_PIN)
    assert "transformers>=4.45 ([train]): the lock pins 4.0.0" in found
    assert "ruff>=0.6 ([dev]): not in the lock" in found


def test_torch_stays_out_of_the_lock_and_its_pin_in_range(lockfile) -> None:  # type: ignore[no-untyped-def]
    text = lockfile.LOCK.read_text()
    assert not re.search(r"^(torch|nvidia-[\w-]+)==", text, re.M)  # the CPU wheel goes in first, by TORCH_PIN
    found = lockfile.problems(text, lockfile.dependency_lists(), "torch==2.3.0")
    assert "torch>=2.4 ([train]): TORCH_PIN torch==2.3.0 is outside the range" in found
