"""The digest of the environment code: what a sandbox image says it was built from.

Images built by `hillclimb image build` carry it as a label; the Docker provider compares it
with the code it runs beside, so that an image left over from older code — other task
suites, another server — is refused by name instead of silently serving them.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

IMAGE_LABEL = "org.hillclimb.envs-digest"


@cache
def envs_digest() -> str:
    """sha256 (16 hex digits) over the `envs` package's sources and data files, by relative path."""
    root = Path(__file__).parent
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".py", ".yaml")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]
