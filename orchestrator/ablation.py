"""The λ sweep, ECHO's ablation: one full training run per (λ, seed), all at equal RL steps,
resumable run by run.

    config, λ values, seeds ─► plan: one Arm per (λ, seed), seed by seed, every config checked first
    each arm ─► <run.dir>/<run.name>-lambda<λ>-s<seed>/
        holds a finished run of the same config (summary.json over all `train.steps` RL steps)?
            its figures are read back, nothing trains
        else: trained from scratch; an unfinished earlier attempt is moved aside (run.resume=false).
            The loop's own resume is bit-exact for the learner but not shown to be for the
            rollouts it plays again, so a row never mixes two attempts.
    rows, one per run ─► per_lambda: mean and min–max over seeds; held-out pass@1 also as tasks
        solved of those played (binomial standard error) and, task by task, against λ = 0

ECHO on versus off is the two-λ case, and the default: the config's own λ, then 0. A time budget
(`train.time_budget_s`) would end runs on a slow or busy host early, at different steps, so the
sweep drops it (`sweep_base` says so): every run takes `train.steps` RL steps, and each row
records the steps it took.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from hillclimb.config.losses import ConstantLambda
from hillclimb.config.run import RunConfig
from hillclimb.errors import ConfigError
from orchestrator.fingerprint import differences
from orchestrator.ledger import Ledger
from orchestrator.ledger_location import ledger_location
from orchestrator.run_lifecycle import prepare_run_dir
from orchestrator.train import Report, Trainer

FIGURES = ("rl_steps", "train_reward", "heldout_pass1", "heldout_env_ce_after_warmup", "heldout_env_ce")
"""Each run's figures that the table gives per λ as mean and min–max over seeds."""

Say = Callable[[str], None]


@dataclass(frozen=True)
class Arm:
    """One run of the sweep."""

    lam: float
    seed: int
    config: RunConfig

    @property
    def run_dir(self) -> Path:
        return self.config.run.dir / self.config.run.name

    @property
    def name(self) -> str:
        return f"λ = {label(self.lam)}, seed {self.seed}"


def label(lam: float) -> str:
    """λ as run names and tables show it: 0, 0.005, 1."""
    return format(lam, "g")


def parse_lambdas(text: str) -> list[float]:
    """`--lambdas 0,0.005,0.05` → [0.0, 0.005, 0.05]: each a finite λ ≥ 0, none twice."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise ConfigError(f"--lambdas {text!r}: expected numbers separated by commas, such as 0,0.005,0.05") from None
    bad = [part for part, v in zip(text.split(","), values, strict=True) if not (math.isfinite(v) and v >= 0)]
    if bad:
        raise ConfigError(f"--lambdas {text!r}: each λ must be a finite number ≥ 0, and {bad} are not")
    labels = [label(v) for v in values]
    twice = sorted({lab for lab in labels if labels.count(lab) > 1})
    if twice:
        raise ConfigError(f"--lambdas {text!r}: {twice} given more than once")
    return values


def default_lambdas(config: RunConfig) -> list[float]:
    """ECHO on versus off: the config's constant λ, then 0 (just 0 if that is the config's)."""
    schedule = config.learner.loss.echo.schedule
    if not isinstance(schedule, ConstantLambda):
        raise ConfigError(
            f"the sweep runs constant λ values, and learner.loss.echo.schedule is {schedule.type!r}: "
            "name the values with --lambdas (e.g. --lambdas 0,0.005,0.05)"
        )
    return [schedule.value, 0.0] if schedule.value else [0.0]


def sweep_base(config: RunConfig, say: Say) -> RunConfig:
    """The config every arm derives from: without a time budget, which would end runs at
    different steps on a busy host. Refuses a shared ledger: each run needs its own."""
    if config.run.ledger_uri is not None:
        raise ConfigError(
            f"run.ledger_uri={config.run.ledger_uri} would put every run of the sweep in one ledger: "
            "leave it unset (--set run.ledger_uri=null) so that each run keeps its own in its directory"
        )
    budget = config.train.time_budget_s
    if budget is None:
        return config
    say(
        f"train.time_budget_s={budget:g} is dropped for the sweep: every run takes all "
        f"{config.train.steps} RL steps (equal steps across λ), however long that takes"
    )
    return config.model_copy(update={"train": config.train.model_copy(update={"time_budget_s": None})})


def arm_config(config: RunConfig, lam: float, seed: int) -> RunConfig:
    """The run at `lam` and `seed`: a constant λ, the seed everywhere it matters, no time budget,
    and a fresh start (an unfinished run found in its directory is set aside, never continued)."""
    tree = config.model_dump(mode="json")
    tree["run"] |= {"name": f"{config.run.name}-lambda{label(lam)}-s{seed}", "seed": seed, "resume": False}
    tree["learner"] |= {"seed": seed, "echo_lambda": None}
    tree["learner"]["loss"]["echo"]["schedule"] = {"type": "constant", "value": lam}
    if tree["policy"].get("model", {}).get("type") == "tiny":
        tree["policy"]["model"]["seed"] = seed
    tree["train"]["time_budget_s"] = None
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as e:
        reasons = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"the sweep's run at λ = {label(lam)}, seed {seed} is invalid: {reasons}") from None


def plan(config: RunConfig, lambdas: list[float], seeds: list[int]) -> list[Arm]:
    """Every run, seed by seed (a sweep stopped early has compared every λ on its first seeds),
    each config checked before anything trains."""
    return [Arm(lam, seed, arm_config(config, lam, seed)) for seed in seeds for lam in lambdas]


def earlier_run(arm: Arm) -> tuple[dict[str, Any] | None, str]:
    """The summary of a finished run of this arm already in its directory, else None and why
    (empty when the directory holds nothing)."""
    if not arm.run_dir.exists():
        return None, ""
    try:
        summary = json.loads((arm.run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None, "its earlier run did not finish"
    steps = arm.config.train.steps
    if summary.get("interrupted") or summary.get("rl_steps") != steps:
        return None, f"its earlier run stopped at RL step {summary.get('rl_steps')} of {steps}"
    changed = differences(arm.run_dir, arm.config.model_dump(mode="json"))
    if changed:
        return None, f"its earlier run was made with another config ({', '.join(changed[:3])})"
    return summary, ""


async def run_sweep(arms: list[Arm], report: Callable[[Arm], Report], say: Say) -> list[dict[str, Any]]:
    """One row per arm: its finished run read back, or run now."""
    rows = []
    for n, arm in enumerate(arms, 1):
        where = f"run {n} of {len(arms)} ({arm.name})"
        summary, why = earlier_run(arm)
        if summary is not None:
            say(f"{where}: finished before, read back from {arm.run_dir}")
        else:
            say(f"{where}: {why + '; ' if why else ''}training in {arm.run_dir}")
            summary = await Trainer(arm.config, prepare_run_dir(arm.config, "train", say), report(arm)).run()
        rows.append(row(arm, summary))
    return rows


def row(arm: Arm, summary: dict[str, Any]) -> dict[str, Any]:
    """A run's line in the result: its summary's headline figures and its final held-out episodes."""
    return {
        "lambda": arm.lam,
        "seed": arm.seed,
        "run_dir": str(arm.run_dir),
        "lambda_used": summary["echo_lambda"],  # as the last RL step recorded it
        "rl_steps": summary["rl_steps"],
        "train_reward": summary["train_reward"]["last_steps"],
        "heldout_pass1": summary["heldout_pass1"]["final"],
        "heldout_env_ce_after_warmup": summary["heldout_env_ce"]["after_warmup"],
        "heldout_env_ce": summary["heldout_env_ce"]["final"],
        "wall_s": summary["wall_s"],
        "heldout_solved": final_heldout(arm, summary["rl_steps"]),
    }


def final_heldout(arm: Arm, step: int) -> dict[str, bool]:
    """Task by task, whether the run's last evaluation (at RL step `step`) solved it: its
    episodes are in the ledger under the evaluation's group ids, `eval<step>-heldout-...`."""
    ledger = Ledger(ledger_location(arm.run_dir, arm.config.run.ledger_uri))
    prefix = f"eval{step}-heldout-"
    return {e.task_id: e.reward > 0 for e in ledger.entries() if e.group_id.startswith(prefix)}


def per_lambda(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per λ, in the sweep's order: each figure's spread over seeds; the final held-out
    episodes of all seeds pooled (solved of played, binomial standard error); and, where λ = 0
    ran, the tasks each λ solved that λ = 0 did not on the same seed, and the reverse."""
    baseline = {r["seed"]: r["heldout_solved"] for r in rows if r["lambda"] == 0}
    out = []
    for lam in dict.fromkeys(r["lambda"] for r in rows):
        mine = [r for r in rows if r["lambda"] == lam]
        outcomes = [solved for r in mine for solved in r["heldout_solved"].values()]
        entry: dict[str, Any] = {"lambda": lam, "seeds": [r["seed"] for r in mine]}
        entry |= {key: spread([r[key] for r in mine]) for key in FIGURES}
        entry["heldout_episodes"] = {
            "solved": sum(outcomes),
            "played": len(outcomes),
            "stderr": binomial_stderr(sum(outcomes), len(outcomes)),
        }
        if baseline and lam != 0:
            entry["against_lambda0"] = against(mine, baseline)
        out.append(entry)
    return out


def spread(values: list[float | None]) -> dict[str, float] | None:
    """Mean, min and max of the values a run measured (None: no run measured it)."""
    measured = [v for v in values if v is not None]
    if not measured:
        return None
    return {"mean": statistics.fmean(measured), "min": min(measured), "max": max(measured)}


def binomial_stderr(solved: int, played: int) -> float | None:
    """√(p(1-p)/n) of a success rate. It takes the episodes as independent draws; the same task
    under several seeds is not quite that, so the seeds' min–max is the other half of the story."""
    if not played:
        return None
    p = solved / played
    return math.sqrt(p * (1 - p) / played)


def against(rows: list[dict[str, Any]], baseline: dict[int, dict[str, bool]]) -> dict[str, Any]:
    """Tasks solved here and not by λ = 0 on the same seed (gained), and the reverse (lost), with
    a two-sided sign test's p-value on those that differ (the same tasks, greedy episodes: the
    tasks both solved or both failed say nothing about the difference)."""
    gained = lost = 0
    for r in rows:
        base = baseline.get(r["seed"], {})
        for task, solved in r["heldout_solved"].items():
            if task in base:
                gained += solved and not base[task]
                lost += base[task] and not solved
    return {"gained": gained, "lost": lost, "sign_test_p": sign_test_p(gained, lost)}


def sign_test_p(gained: int, lost: int) -> float:
    """Two-sided p-value of `gained` against `lost` if either were equally likely (1.0 for none)."""
    n = gained + lost
    tail = sum(math.comb(n, k) for k in range(min(gained, lost) + 1)) / 2**n
    return min(1.0, 2 * tail)
