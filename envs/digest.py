"""Digests of environment code: what a sandbox image says it was built from.

Images built by `hillclimb image build` carry the digest of the `envs` package as a label,
and one label per user environment package put in with `--env` (`org.hillclimb.package-digest.
<package>`). The Docker provider compares them with the code it runs beside, so that an image
left over from older code — other task suites, another server, an environment it does not
hold at all — is refused by name instead of silently serving them.
"""

from __future__ import annotations

import hashlib
import importlib.util
from functools import cache
from pathlib import Path

IMAGE_LABEL = "org.hillclimb.envs-digest"
PACKAGE_LABEL_PREFIX = "org.hillclimb.package-digest."
SOURCE_SUFFIXES = (".py", ".yaml", ".yml", ".json", ".jsonl")
"""What an environment is made of: code, and task suites in data files."""


def directory_digest(root: Path) -> str:
    """sha256 (16 hex digits) over the sources and data files under `root`, by relative path."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in SOURCE_SUFFIXES):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@cache
def envs_digest() -> str:
    """The digest of this `envs` package."""
    return directory_digest(Path(__file__).parent)


def package_label(package: str) -> str:
    """The image label that carries the digest of the top-level package `package`."""
    return PACKAGE_LABEL_PREFIX + package


def package_digest(package: str) -> str:
    """The digest of the top-level package `package` as this interpreter imports it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"no package {package!r} to digest (a module or nothing by that name)")
    return directory_digest(Path(next(iter(spec.submodule_search_locations))))
