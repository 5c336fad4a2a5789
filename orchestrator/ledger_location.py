"""Where a run's ledger lives: the configured `run.ledger_uri`, else `<run dir>/ledger` on the
driver's disk; and whether a location is one node's disk or shared storage. Which URIs are
accepted is `hillclimb.config.ledger`'s check, at config load.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from hillclimb.config.ledger import LOCAL_SCHEMES


def ledger_location(run_dir: Path, ledger_uri: str | None) -> str:
    """The configured URI, or `<run dir>/ledger` as an absolute path (actors may run elsewhere)."""
    return ledger_uri if ledger_uri is not None else str((run_dir / "ledger").absolute())


def on_local_disk(location: str) -> bool:
    """Whether `location` is a directory on one node's disk rather than shared storage."""
    return urlsplit(location).scheme in ("", *LOCAL_SCHEMES)
