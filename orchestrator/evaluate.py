"""`hillclimb rollout`: run every task of the evaluation splits G times, record, report.

Groups already in the run's ledger are not run again, so an interrupted evaluation
resumes where it stopped.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from envs.errors import ConfigError
from envs.tasks import load_suite
from orchestrator import metrics
from orchestrator.config import RunConfig
from orchestrator.driver import RolloutDriver
from orchestrator.ledger import Ledger
from orchestrator.ledger_location import ledger_location
from orchestrator.report import SplitReport, summarize
from orchestrator.schedule import GroupSpec, round_of_groups
from trainers.trajectory import TrajectoryGroup


def prepare_run_dir(config: RunConfig) -> Path:
    """Create `<run.dir>/<run.name>` (or reuse it when resuming) and dump the resolved config."""
    run_dir = config.run.dir / config.run.name
    if run_dir.exists() and not config.run.resume:
        raise ConfigError(f"run directory {run_dir} exists; pick another run.name or set run.resume=true")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(config.model_dump(mode="json"), indent=2) + "\n")
    return run_dir


def eval_groups(config: RunConfig, tag: str = "eval") -> list[GroupSpec]:
    suite = load_suite(config.env.name)
    return [
        group
        for split in config.env.eval_splits
        for group in round_of_groups(
            suite, split, run_seed=config.run.seed, group_size=config.rollout.group_size, round_index=0, tag=tag
        )
    ]


async def evaluate(
    config: RunConfig, run_dir: Path, on_episodes: Callable[[int], None] = lambda n: None
) -> list[SplitReport]:
    ledger = Ledger(ledger_location(run_dir, config.run.ledger_uri))
    groups = eval_groups(config)
    recorded = ledger.group_ids()
    todo = [g for g in groups if g.group_id not in recorded]
    on_episodes((len(groups) - len(todo)) * config.rollout.group_size)

    def on_group(group: TrajectoryGroup) -> None:
        ledger.append(group)
        metrics.record_group(group)
        on_episodes(len(group.trajectories))

    if todo:
        driver = RolloutDriver(config)
        lag_monitor = metrics.start_loop_lag_monitor()
        await driver.start()
        try:
            await driver.run_groups(todo, on_group)
        finally:
            await driver.close()
            lag_monitor.cancel()
    trajectories = [t for g in groups for t in ledger.read_group(g.group_id).trajectories]
    return summarize(trajectories, config.eval.k)
