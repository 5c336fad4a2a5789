"""The dependency lock: `requirements.lock`, every package of the dev/CI/main-job install pinned
with its hashes, made by `uv pip compile` from pyproject.toml's own ranges (which stay open).

    python .ci/lockfile.py make    # re-resolve (`make lock`), keeping the pins the ranges still allow
    python .ci/lockfile.py make --upgrade   # (`make lock-upgrade`) the newest versions the ranges allow
    python .ci/lockfile.py check   # the lock still answers pyproject.toml (`make lint`, CI)

torch is left out: the CPU wheel that `TORCH_PIN` names is not on PyPI (PyPI's Linux torch
pulls the CUDA stack), so the Makefile installs it first and the lock is resolved against it.
The lock's first line records a digest of the dependency lists it was made from: changing a
range in pyproject.toml without `make lock` fails the check, as does a pin outside its range.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements.lock"
EXTRAS = ("train", "smollm2", "docker", "k8s", "aca", "dev")
UNLOCKED = ("torch",)
LOCAL_WHEELS = Path("/opt/wheels")  # where this machine kind keeps the CPU torch wheel
DIGEST_LINE = re.compile(r"^# pyproject dependencies: sha256=([0-9a-f]{64}) ", re.M)
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)", re.M)


def dependency_lists(pyproject: Path = REPO / "pyproject.toml") -> dict[str, list[str]]:
    project = tomllib.loads(pyproject.read_text())["project"]
    lists = {"": project["dependencies"]}
    lists |= {extra: project["optional-dependencies"][extra] for extra in EXTRAS}
    return lists


def digest(lists: dict[str, list[str]], torch_pin: str) -> str:
    return hashlib.sha256(json.dumps([lists, torch_pin], sort_keys=True).encode()).hexdigest()


def make(torch_pin: str, upgrade: bool = False) -> None:
    """Resolve the lock; versions already pinned stay where the ranges still allow them (uv reads
    its output file as preferences), unless `upgrade`: a new dependency then moves nothing else."""
    with tempfile.TemporaryDirectory() as scratch:
        constraints, output = Path(scratch) / "constraints.txt", Path(scratch) / "requirements.lock"
        constraints.write_text(torch_pin + "\n")
        if LOCK.exists() and not upgrade:
            output.write_text(LOCK.read_text())
        command = [
            "uv", "pip", "compile", "pyproject.toml", *(f"--extra={e}" for e in EXTRAS),
            "--generate-hashes", "--python-version=3.11", "--native-tls", "--quiet",
            *(f"--no-emit-package={p}" for p in UNLOCKED), f"--constraint={constraints}",
            f"--output-file={output}", "--custom-compile-command=make lock",
        ]  # fmt: skip
        if LOCAL_WHEELS.is_dir():
            command.append(f"--find-links={LOCAL_WHEELS}")
        subprocess.run(command, cwd=REPO, check=True, capture_output=True, text=True)
        resolved = output.read_text()
    header = f"# pyproject dependencies: sha256={digest(dependency_lists(), torch_pin)} ({torch_pin} installed first)\n"
    LOCK.write_text(header + resolved)
    print(f"wrote {LOCK.name}: {len(PIN.findall(resolved))} packages pinned")


def problems(lock_text: str, lists: dict[str, list[str]], torch_pin: str) -> list[str]:
    """Why the lock does not answer these dependency lists (none: it does)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    found = []
    recorded = DIGEST_LINE.search(lock_text)
    if recorded is None or recorded.group(1) != digest(lists, torch_pin):
        found.append("pyproject.toml's dependencies (or TORCH_PIN) changed since the lock was made")
    pins = {canonicalize_name(name): version for name, version in PIN.findall(lock_text)}
    environment = {"python_version": "3.11", "python_full_version": "3.11.0", "extra": ""}
    for extra, requirements in lists.items():
        for line in requirements:
            requirement = Requirement(line)
            name = canonicalize_name(requirement.name)
            if requirement.marker is not None and not requirement.marker.evaluate(environment):
                continue
            where = f"{requirement} ({'[' + extra + ']' if extra else 'base'})"
            if name in UNLOCKED:
                pinned = torch_pin.partition("==")[2]
                if not requirement.specifier.contains(pinned, prereleases=True):
                    found.append(f"{where}: TORCH_PIN {torch_pin} is outside the range")
            elif name not in pins:
                found.append(f"{where}: not in the lock")
            elif not requirement.specifier.contains(pins[name], prereleases=True):
                found.append(f"{where}: the lock pins {pins[name]}")
    return found


def check(torch_pin: str) -> int:
    if not LOCK.exists():
        print(f"{LOCK.name} is missing: run `make lock`", file=sys.stderr)
        return 1
    found = problems(LOCK.read_text(), dependency_lists(), torch_pin)
    for problem in found:
        print(f"{LOCK.name}: {problem}", file=sys.stderr)
    if found:
        print("run `make lock` and commit requirements.lock", file=sys.stderr)
        return 1
    print(f"{LOCK.name} answers pyproject.toml")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) not in (3, 4) or argv[1] not in ("make", "check") or argv[3:] not in ([], ["--upgrade"]):
        print("usage: lockfile.py make|check TORCH_PIN [--upgrade]", file=sys.stderr)
        return 2
    if argv[1] == "make":
        make(argv[2], upgrade=argv[3:] == ["--upgrade"])
        return 0
    return check(argv[2])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
