"""A run directory from the command that opens it to the command's end.

    train / rollout / eval ─► run_directory(config, kind) ─► <run.dir>/<run.name>/
                                                               config.json   the resolved config
                                                               run.json      {"kind", "commit"} and, once the
                                                                             command failed, {"error": ...}
    the command fails ─┬─ nothing recorded yet (a typo'd environment, a missing model or oracle, ...):
                       │  the directory it made is removed, and the run `run.resume=false` moved aside
                       │  is put back: a failed retry leaves no trace
                       └─ something recorded: run.json keeps the error; `runs ls` shows the run failed

Resuming a run (`run.resume`, under a config with the same results: orchestrator/fingerprint.py)
reuses its directory; a failed one is failed no longer once a command runs it again. Ctrl-C is not
a failure: an interrupted run keeps what it recorded and says so itself (summary.json).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from hillclimb.errors import ConfigError
from orchestrator.fingerprint import check_resumable
from orchestrator.provenance import commit

if TYPE_CHECKING:
    from hillclimb.config.run import RunConfig

RunKind = Literal["train", "rollout", "eval"]
RUN_FILE = "run.json"
BOOKKEEPING = ("config.json", RUN_FILE)
"""What opening a run writes; anything else in its directory is something the run recorded."""

Say = Callable[[str], None]


@dataclass(frozen=True)
class _Opened:
    path: Path
    created: bool
    """This command made the directory (it did not resume one)."""
    aside: Path | None
    """Where `run.resume=false` moved the earlier run of that name."""


def prepare_run_dir(config: RunConfig, kind: RunKind, say: Say = lambda line: None) -> Path:
    """Create `<run.dir>/<run.name>`, or reuse it when resuming under a config with the same
    results; `run.resume=false` moves an existing one aside. Writes config.json and run.json."""
    return _open(config, kind, say).path


@contextmanager
def run_directory(config: RunConfig, kind: RunKind, say: Say = lambda line: None) -> Iterator[Path]:
    """`prepare_run_dir` for the length of a command: if the command fails before the run
    recorded anything, the directory goes (and the run it replaced comes back); if it fails
    later, run.json says why."""
    opened = _open(config, kind, say)
    try:
        yield opened.path
    except BaseException as e:
        if opened.created and not _recorded(opened.path, config):
            _undo(opened, say)
        elif isinstance(e, Exception):  # not Ctrl-C, SIGTERM's cancellation or an exit
            write_run_file(opened.path, kind, error=f"{type(e).__name__}: {e}")
        raise


def write_run_file(run_dir: Path, kind: RunKind, *, error: str | None = None) -> None:
    record: dict[str, Any] = {"kind": kind, "commit": commit()}  # the code that made what the run records
    if error is not None:
        record |= {"error": error, "failed_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    (run_dir / RUN_FILE).write_text(json.dumps(record, indent=2) + "\n")


def _free_aside(run_dir: Path) -> Path:
    """`<run>.replaced-<time>`, numbered when a run was already replaced within the same second."""
    stamp = f"{run_dir.name}.replaced-{time.strftime('%Y%m%dT%H%M%S')}"
    aside, n = run_dir.with_name(stamp), 1
    while aside.exists():
        n += 1
        aside = run_dir.with_name(f"{stamp}-{n}")
    return aside


def _open(config: RunConfig, kind: RunKind, say: Say) -> _Opened:
    run_dir = config.run.dir / config.run.name
    resolved = config.model_dump(mode="json")
    aside = None
    if run_dir.exists() and config.run.resume:
        check_resumable(run_dir, resolved)
    elif run_dir.exists():
        _refuse_shared_ledger_with_groups(config)
        aside = _free_aside(run_dir)
        run_dir.rename(aside)
        say(f"run.resume=false: moved the earlier {run_dir} to {aside}; starting fresh")
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(resolved, indent=2) + "\n")
    write_run_file(run_dir, kind)
    return _Opened(run_dir, created, aside)


def _refuse_shared_ledger_with_groups(config: RunConfig) -> None:
    """A ledger outside the run directory cannot be set aside with it: starting fresh on it
    would reuse its groups all the same."""
    if config.run.ledger_uri is not None and _ledger_groups(config.run.ledger_uri):
        raise ConfigError(
            f"run.resume=false, but the ledger at run.ledger_uri={config.run.ledger_uri} already holds groups: "
            "give the fresh run a ledger_uri of its own"
        )


def _ledger_groups(location: str) -> set[str]:
    from orchestrator.ledger import Ledger

    return Ledger(location).group_ids()


def _recorded(run_dir: Path, config: RunConfig) -> bool:
    """Whether the run holds anything beyond what opening it wrote (empty directories, such as
    a ledger opened but never written, do not count)."""
    bookkeeping = {run_dir / name for name in BOOKKEEPING}
    if any(path.is_file() and path not in bookkeeping for path in run_dir.rglob("*")):
        return True
    return config.run.ledger_uri is not None and bool(_ledger_groups(config.run.ledger_uri))


def _undo(opened: _Opened, say: Say) -> None:
    shutil.rmtree(opened.path)
    if opened.aside is not None:
        opened.aside.rename(opened.path)
        say(f"nothing was recorded: the earlier run is back at {opened.path}")
