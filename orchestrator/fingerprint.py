"""A run's fingerprint: the resolved config minus the keys that cannot change its results.

    new config ─► flatten ─► drop NOT_RESULTS ─┐
                                                ├─ differ? refuse to resume, naming the keys
    <run dir>/config.json (what made the run) ─┘

A resumed run reuses every group already in its ledger and continues from its checkpoint, so
resuming under a config that changes results would mix two experiments and report the old one's
numbers as the new one's. Keys that only say where a run lives, how it is watched or how fast it
goes may change between invocations.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from hillclimb.errors import ConfigError

NOT_RESULTS = (
    "run.dir",  # where the run lives, not what it does
    "run.name",
    "run.resume",
    "run.ledger_uri",
    "run.metrics_port",  # how the run is watched
    "run.metrics_host",
    "log.",  # where else the figures are sent (Weights & Biases, TensorBoard)
    "ray.",  # which cluster and how many workers: episodes are seeded per group, not per worker
    "pool.",  # sandbox-pool throughput and retry pacing
    "rollout.concurrency",
    "eval.k",  # pass@k is computed from the ledger at the end (each k ≤ rollout.group_size, checked at load)
    "train.steps",  # how long: a stopped run may be continued for longer (the LR schedule follows)
    "train.time_budget_s",
    "train.checkpoint_every",
    "buffer.max_staleness",  # a run may continue asynchronously; staleness is recorded per step
    "policy.api_key_env",  # how a remote policy is reached, not what it answers (its model and
    "policy.max_concurrency",  # base_url do count)
    "policy.timeout_s",
    "policy.max_retries",
    "policy.backoff_s",
)
"""Config keys (a trailing dot: a whole section) that may differ when a run resumes."""

_ABSENT = "<absent>"


def fingerprint(config: dict[str, Any]) -> dict[str, Any]:
    """The dotted keys of a resolved config (as dumped to JSON) that decide its results."""
    return {key: value for key, value in _flatten(config).items() if not _ignored(key)}


def differences(run_dir: Path, config: dict[str, Any]) -> list[str]:
    """The keys deciding results on which `config` differs from the one that made `run_dir`
    ("key old → new", sorted); none for a directory without a config.json."""
    stored_path = run_dir / "config.json"
    if not stored_path.exists():
        return []
    stored = fingerprint(as_read_now(json.loads(stored_path.read_text())))
    current = fingerprint(config)
    changed = sorted(k for k in stored.keys() | current.keys() if stored.get(k, _ABSENT) != current.get(k, _ABSENT))
    return [f"{k} {stored.get(k, _ABSENT)!r} → {current.get(k, _ABSENT)!r}" for k in changed]


def as_read_now(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored config as this version reads it: a key added since the run was made takes its
    default, which keeps the behaviour the run had (so an upgrade does not make every earlier run
    look different). One this version refuses is compared as stored."""
    from hillclimb.config.run import RunConfig

    try:
        return RunConfig.model_validate(stored).model_dump(mode="json")
    except ValidationError:
        return stored


def check_resumable(run_dir: Path, config: dict[str, Any]) -> None:
    """Refuse to resume `run_dir` with a config whose results would differ from its own."""
    changed = differences(run_dir, config)
    if changed:
        shown = ", ".join(changed[:5])
        more = f" (and {len(changed) - 5} more)" if len(changed) > 5 else ""
        raise ConfigError(
            f"cannot resume {run_dir}: it was made with a different config ({shown}{more}); "
            "its results would be mixed with this one's. Start fresh with --set run.resume=false "
            "or give the run another name (--set run.name=...)"
        )


def _ignored(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in NOT_RESULTS)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat
