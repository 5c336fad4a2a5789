"""ECHO on versus off: the same run with λ as configured and with λ = 0, over several seeds.

Each run is a full `Trainer` run in its own directory (`<name>-echo-s<seed>` and
`<name>-grpo-s<seed>`); the table holds what the ECHO paper compares — training reward,
held-out pass@1, held-out env-token CE — per seed and averaged, beside the RL steps each arm
took (under `train.time_budget_s` arms may differ: compare them only at equal steps).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hillclimb.config.run import RunConfig
from orchestrator.run_lifecycle import prepare_run_dir
from orchestrator.train import Report, Trainer

ARMS = ("echo", "grpo")


def arm_config(config: RunConfig, arm: str, seed: int) -> RunConfig:
    """The run of one arm and seed: λ = 0 for the GRPO arm, seeds everywhere they matter."""
    tree = config.model_dump(mode="json")
    tree["run"] |= {"name": f"{config.run.name}-{arm}-s{seed}", "seed": seed}
    tree["learner"]["seed"] = seed
    if tree["policy"].get("model", {}).get("type") == "tiny":
        tree["policy"]["model"]["seed"] = seed
    if arm == "grpo":
        tree["learner"]["echo_lambda"] = 0.0
    return RunConfig.model_validate(tree)


async def run_ablation(
    config: RunConfig, seeds: list[int], report: Callable[[str, int], Report]
) -> list[dict[str, Any]]:
    """One row per (arm, seed): the summary's headline figures."""
    rows = []
    for seed in seeds:
        for arm in ARMS:
            cfg = arm_config(config, arm, seed)
            summary = await Trainer(cfg, prepare_run_dir(cfg, "train"), report(arm, seed)).run()
            rows.append(
                {
                    "arm": arm,
                    "seed": seed,
                    "rl_steps": summary["rl_steps"],
                    "train_reward": summary["train_reward"]["last_steps"],
                    "heldout_pass1": summary["heldout_pass1"]["final"],
                    "heldout_env_ce": summary["heldout_env_ce"]["final"],
                    "heldout_env_ce_after_warmup": summary["heldout_env_ce"]["after_warmup"],
                }
            )
    return rows


def averages(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    keys = ("rl_steps", "train_reward", "heldout_pass1", "heldout_env_ce")
    out = {}
    for arm in ARMS:
        mine = [r for r in rows if r["arm"] == arm]
        out[arm] = {k: sum(r[k] for r in mine) / len(mine) for k in keys}
    return out
