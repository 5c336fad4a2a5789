"""One `hillclimb optimize` run from its parts: selection, then the test report, then the files.

OptimizeJob (agent config, out dir, splits, rule, loop settings) + proposer
    ─► Selection.run ─► best skill ─► final.report_on_test ─► best_skill.md, report.json, validation.png
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hillclimb.config.run import RunConfig
from hillclimb.skill import skill_sha
from orchestrator.fingerprint import fingerprint
from orchestrator.loggers import open_loggers
from orchestrator.optimize.acceptance import AcceptanceRule
from orchestrator.optimize.final import report_on_test, write_outputs
from orchestrator.optimize.history import History, check_settings
from orchestrator.optimize.loop import LoopSettings, Progress, Say, Selection
from orchestrator.optimize.proposers import Proposer
from orchestrator.optimize.scoring import Scorer
from orchestrator.optimize.uses import TaskUses


@dataclass(frozen=True)
class OptimizeJob:
    config: RunConfig
    """The agent's run config (a chat policy); each skill is set into it as `rollout.skill`."""
    out: Path
    initial: str
    uses: TaskUses
    rule: AcceptanceRule
    settings: LoopSettings

    def fingerprint(self, proposer: str) -> dict[str, Any]:
        """What a rerun must share with the run in `out` to resume it."""
        agent = fingerprint(self.config.model_dump(mode="json"))  # what decides results, not where or how fast
        return {
            "env": self.settings.env,
            "agent_config_sha": hashlib.sha256(json.dumps(agent, sort_keys=True).encode()).hexdigest()[:16],
            "proposer": proposer,
            "initial_skill_sha": skill_sha(self.initial),
            "sizes": self.uses.sizes(),
            "rule": self.rule.describe(),
            **{k: v for k, v in vars(self.settings).items() if k != "env"},
        }


async def run_optimization(job: OptimizeJob, proposer: Proposer, *, progress: Progress, say: Say) -> dict[str, Any]:
    """Select, report on test, write the outputs; returns the report."""
    job.out.mkdir(parents=True, exist_ok=True)
    check_settings(job.out, job.fingerprint(proposer.name))
    scorer = Scorer(job.config, job.out, frozenset(t.id for t in job.uses.test))
    history = History.open(job.out)
    loggers = open_loggers(job.config, job.out)
    try:
        selection = Selection(
            job.settings,
            job.uses,
            scorer,
            proposer,
            job.rule,
            history,
            progress=progress,
            say=say,
            log=lambda iteration, values: loggers.scalars("optimize", iteration, values),
        )
        best = await selection.run(job.initial)
        s = job.settings
        report = await report_on_test(
            scorer, job.uses, job.initial, best, history, env=s.env, seed=s.seed, rollouts=s.rollouts, progress=progress
        )
    finally:
        loggers.close()
    write_outputs(job.out, best, report, history)
    return report
