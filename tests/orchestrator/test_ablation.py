"""The ablation's arms: the same run with λ as configured and with λ = 0, seeded per arm."""

from __future__ import annotations

from pathlib import Path

from hillclimb.config import load_config
from hillclimb.config.losses import ConstantLambda
from orchestrator.ablation import arm_config, averages

ECHO_TOY = Path(__file__).parents[2] / "configs" / "echo_toy.yaml"


def test_the_grpo_arm_turns_echo_off_however_lambda_was_set() -> None:
    for overrides in ([], ["learner.echo_lambda=0.5"]):
        config = load_config(ECHO_TOY, overrides)
        echo, grpo = arm_config(config, "echo", 7), arm_config(config, "grpo", 7)
        assert echo.learner.loss.echo.schedule == config.learner.loss.echo.schedule
        assert grpo.learner.loss.echo.schedule == ConstantLambda(value=0.0)
        assert (echo.run.name, grpo.run.name) == ("echo-toy-echo-s7", "echo-toy-grpo-s7")
        assert echo.run.seed == grpo.run.seed == echo.learner.seed == echo.policy.model.seed == 7


def test_averages_are_per_arm_with_the_rl_steps_each_took() -> None:
    """Under a time budget arms may take different numbers of RL steps: the table shows them."""
    rows = [
        {"arm": arm, "seed": s, "rl_steps": n, "train_reward": r, "heldout_pass1": p, "heldout_env_ce": ce}
        for arm, s, n, r, p, ce in [
            ("echo", 0, 1, 1.0, 0.5, 2.0),
            ("echo", 1, 3, 0.0, 0.0, 4.0),
            ("grpo", 0, 8, 0.5, 0.25, 5.0),
        ]
    ]
    assert averages(rows) == {
        "echo": {"rl_steps": 2.0, "train_reward": 0.5, "heldout_pass1": 0.25, "heldout_env_ce": 3.0},
        "grpo": {"rl_steps": 8.0, "train_reward": 0.5, "heldout_pass1": 0.25, "heldout_env_ce": 5.0},
    }
