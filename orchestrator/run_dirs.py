"""Run directories read back: what `hillclimb runs ls` and `hillclimb runs show` print.

    <runs root>/<run>/config.json     the resolved config            every run
                      run.json        its kind; the error it failed  every run since run.json came
                                      with, if it did                (older ones: kind guessed)
                      metrics.jsonl   one record per step or eval    `hillclimb train`
                      checkpoints/                                   `hillclimb train`
                      summary.json    written when training ends     a finished train run
                      eval.json       pass@k per split               a finished rollout or eval run
                      ledger/         every trajectory (or where config's run.ledger_uri says)

A run with no summary.json / eval.json (or a summary that says `interrupted`) failed (run.json
says so: `orchestrator.run_lifecycle`), stopped early, or is still going: its workers' beat files
say which of the last two (`orchestrator.heartbeats`). Everything here only reads; nothing is created.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, TypeAdapter

from hillclimb.errors import ConfigError
from orchestrator.ledger_location import ledger_location, on_local_disk
from orchestrator.run_lifecycle import RUN_FILE, RunKind

if TYPE_CHECKING:
    from orchestrator.ledger import Ledger
    from trainers.tokenizer import Tokenizer


class RunNotFoundError(ConfigError):
    """No run directory (with a config.json) where one was named."""


class RunInfo(BaseModel):
    """One line of `runs ls`."""

    name: str
    path: Path
    kind: RunKind
    env: str
    progress: str
    """`12/100 steps` for training, `40 episodes` for a rollout."""
    result: str
    """The last held-out pass@1 (`p@1 0.250`), or train reward before any evaluation (`rew 0.500`)."""
    started: datetime
    """When the run (or its latest resume) began: its config.json was written then."""
    state: Literal["finished", "running", "failed", "interrupted"]
    error: str | None = None
    """Why the run failed (the command's error), when it did."""


def find_runs(root: Path) -> list[Path]:
    """Run directories under `root`, oldest first."""
    if not root.is_dir():
        raise RunNotFoundError(f"no runs directory {root}: pass --root DIR (the configs' run.dir)")
    runs = [path for path in root.iterdir() if (path / "config.json").is_file()]
    return sorted(runs, key=lambda path: ((path / "config.json").stat().st_mtime, path.name))


def resolve_run(run: str, root: Path) -> Path:
    """`run` as a path to a run directory, or a run's name under `root`."""
    for candidate in (Path(run), root / run):
        if (candidate / "config.json").is_file():
            return candidate
    known = ", ".join(path.name for path in find_runs(root)) if root.is_dir() else "none"
    raise RunNotFoundError(f"no run {run!r} (a directory with config.json) here or under {root}; runs: {known}")


def read_json(path: Path) -> Any:
    """A run file's JSON, or None when absent; a torn or foreign file is a clear error."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise ConfigError(f"{path} is not valid JSON ({e}): was the run stopped while writing it?") from e


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl's records; a torn last line (a run killed mid-write) is skipped."""
    path = run_dir / "metrics.jsonl"
    records = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def run_kind(run_dir: Path, run_file: dict[str, Any] | None) -> RunKind:
    """The command that made the run, from run.json; for a run older than run.json, guessed
    from what training writes."""
    if run_file is not None:
        kind: RunKind = run_file["kind"]
        return kind
    trained = (run_dir / "metrics.jsonl").exists() or (run_dir / "checkpoints").exists()
    return "train" if trained or (run_dir / "summary.json").exists() else "rollout"


def run_info(run_dir: Path) -> RunInfo:
    config = read_json(run_dir / "config.json")
    run_file = read_json(run_dir / RUN_FILE)
    kind = run_kind(run_dir, run_file)
    progress, result = _train_figures(run_dir, config) if kind == "train" else _rollout_figures(run_dir, config)
    error = run_file.get("error") if run_file is not None else None
    return RunInfo(
        name=run_dir.name,
        path=run_dir,
        kind=kind,
        env=config["env"]["name"],
        progress=progress,
        result=result,
        started=datetime.fromtimestamp((run_dir / "config.json").stat().st_mtime),
        state=_state(run_dir, kind, config, failed=error is not None),
        error=error,
    )


def _state(
    run_dir: Path, kind: RunKind, config: dict[str, Any], *, failed: bool
) -> Literal["finished", "running", "failed", "interrupted"]:
    if _finished(run_dir, kind):
        return "finished"
    if _beating(config):
        return "running"
    return "failed" if failed else "interrupted"


def _finished(run_dir: Path, kind: str) -> bool:
    """A summary.json written on interruption says so (`interrupted: true`): that run did not finish."""
    if kind != "train":
        return (run_dir / "eval.json").exists()
    summary = read_json(run_dir / "summary.json")
    return summary is not None and not summary.get("interrupted", False)


def _beating(config: dict[str, Any]) -> bool:
    from orchestrator.heartbeats import run_state
    from providers.liveness import RunState

    return run_state(config["run"]["name"]) == RunState.ALIVE


def _train_figures(run_dir: Path, config: dict[str, Any]) -> tuple[str, str]:
    records = read_metrics(run_dir)
    steps = max((r["step"] for r in records if r["kind"] == "train"), default=0)
    evals = [r for r in records if "heldout_pass1" in r]
    trains = [r for r in records if "train_reward" in r]
    if evals:
        result = f"p@1 {evals[-1]['heldout_pass1']:.3f}"
    else:
        result = f"rew {trains[-1]['train_reward']:.3f}" if trains else "-"
    return f"{steps}/{config['train']['steps']} steps", result


def _rollout_figures(run_dir: Path, config: dict[str, Any]) -> tuple[str, str]:
    reports = read_json(run_dir / "eval.json")
    if reports is None:  # interrupted: every recorded group holds group_size episodes
        groups = _local_groups_dir(run_ledger_location(run_dir, config))
        if groups is None:
            return "?", "-"
        return f"{len(list(groups.glob('*.parquet'))) * config['rollout']['group_size']} episodes", "-"
    episodes = sum(r["episodes"] for r in reports)
    report = next((r for r in reports if r["split"] == "heldout"), reports[-1] if reports else None)
    if report is None or not report["pass_at"]:
        return f"{episodes} episodes", "-"
    k = min(report["pass_at"], key=int)  # pass@1 unless eval.k left it out
    return f"{episodes} episodes", f"p@{k} {report['pass_at'][k]:.3f}"


def run_ledger_location(run_dir: Path, config: dict[str, Any]) -> str:
    return ledger_location(run_dir, config["run"].get("ledger_uri"))


def _local_groups_dir(location: str) -> Path | None:
    """The ledger's groups/ directory when it is on this disk (None: shared storage)."""
    return Path(location.removeprefix("file://"), "groups") if on_local_disk(location) else None


def run_ledger(run_dir: Path, config: dict[str, Any]) -> Ledger | None:
    """The run's ledger; None before it recorded an episode (opening it would create it)."""
    from orchestrator.ledger import Ledger

    location = run_ledger_location(run_dir, config)
    groups = _local_groups_dir(location)
    return None if groups is not None and not groups.is_dir() else Ledger(location)


def run_tokenizer(config: dict[str, Any]) -> Tokenizer:
    """The tokenizer the run's policy rendered episodes with (from its config.json)."""
    from hillclimb.config.policy import PolicyConfig
    from trainers.policy.factory import load_policy_tokenizer

    try:
        policy = TypeAdapter(PolicyConfig).validate_python(config["policy"])
    except ValueError as e:
        raise ConfigError(f"cannot read the policy of this run's config.json to find its tokenizer: {e}") from e
    try:
        return load_policy_tokenizer(policy)
    except OSError as e:  # a Hugging Face tokenizer neither cached nor reachable
        raise ConfigError(f"cannot load the tokenizer of the run's {policy.type} policy: {e}") from e
