from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from providers.local import LocalProvider


@pytest.fixture
def sandbox_root() -> Iterator[Path]:
    # Short, so Unix socket paths stay under the 108-byte limit.
    root = Path(tempfile.mkdtemp(prefix="hc-", dir="/tmp"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def local_provider(sandbox_root: Path) -> AsyncIterator[LocalProvider]:
    provider = LocalProvider(root=sandbox_root)
    yield provider
    await provider.close()
