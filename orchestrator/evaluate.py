"""`hillclimb rollout`: run every task of the evaluation splits G times, record, report.

Groups already in the run's ledger are not run again, so an interrupted evaluation
resumes where it stopped — but only under a config that gives the same results
(orchestrator/fingerprint.py); `run.resume=false` sets the old run directory aside and starts over.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from envs.authoring.registry import load_suite
from hillclimb.config.run import RunConfig
from orchestrator import metrics
from orchestrator.driver import RolloutDriver
from orchestrator.ledger import Ledger
from orchestrator.ledger_location import ledger_location
from orchestrator.model_check import check_model_available
from orchestrator.report import SplitReport, summarize
from orchestrator.schedule import GroupSpec, round_of_groups
from trainers.trajectory import TrajectoryGroup


def eval_groups(config: RunConfig, tag: str = "eval") -> list[GroupSpec]:
    suite = load_suite(config.env.name)
    return [
        group
        for split in config.env.eval_splits
        for group in round_of_groups(
            suite, split, run_seed=config.run.seed, group_size=config.rollout.group_size, round_index=0, tag=tag
        )
    ]


@dataclass
class EvalPlan:
    """The evaluation's groups, and those of them not yet in the run's ledger."""

    ledger: Ledger
    groups: list[GroupSpec]
    todo: list[GroupSpec]

    @property
    def resumed_episodes(self) -> int:
        return sum(len(g.seeds) for g in self.groups) - self.todo_episodes

    @property
    def todo_episodes(self) -> int:
        return sum(len(g.seeds) for g in self.todo)


def plan_evaluation(config: RunConfig, run_dir: Path) -> EvalPlan:
    ledger = Ledger(ledger_location(run_dir, config.run.ledger_uri))
    groups = eval_groups(config)
    recorded = ledger.group_ids()
    return EvalPlan(ledger, groups, [g for g in groups if g.group_id not in recorded])


async def evaluate(
    config: RunConfig, plan: EvalPlan, on_episodes: Callable[[int], None] = lambda n: None
) -> list[SplitReport]:
    """Run the plan's missing groups (`on_episodes` hears of each group's episodes), then
    report pass@k over all of them."""

    def on_group(group: TrajectoryGroup) -> None:
        plan.ledger.append(group)
        metrics.record_group(group.summary())
        on_episodes(len(group.trajectories))

    if plan.todo:
        check_model_available(config.policy)
        driver = RolloutDriver(config)
        lag_monitor = metrics.start_loop_lag_monitor()
        await driver.start()
        try:
            await driver.run_groups(plan.todo, on_group)
        finally:
            await driver.close()
            lag_monitor.cancel()
    trajectories = [t for g in plan.groups for t in plan.ledger.read_group(g.group_id).trajectories]
    return summarize(trajectories, config.eval.k)
