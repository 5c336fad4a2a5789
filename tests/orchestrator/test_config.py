"""Run configs: every shipped file validates; overrides apply; bad input names its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from hillclimb.config import load_config
from hillclimb.config.losses import ConstantLambda
from hillclimb.errors import ConfigError

CONFIGS_DIR = Path(__file__).parents[2] / "configs"
CONFIGS = sorted(CONFIGS_DIR.glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_validates(path: Path) -> None:
    load_config(path)


def test_overrides_apply_with_yaml_values() -> None:
    cfg = load_config(
        None,
        ["rollout.group_size=8", "env.eval_splits=[heldout]", "rollout.episode.max_turns=3", "policy.type=scripted"],
    )
    assert cfg.rollout.group_size == 8 and cfg.env.eval_splits == ["heldout"] and cfg.rollout.episode.max_turns == 3


def test_echo_lambda_shorthand_replaces_the_schedule() -> None:
    shipped = load_config(CONFIGS_DIR / "echo_toy.yaml")
    assert shipped.learner.loss.echo.schedule.value > 0
    grpo = load_config(CONFIGS_DIR / "echo_toy.yaml", ["learner.echo_lambda=0"])
    assert grpo.learner.loss.echo.schedule == ConstantLambda(value=0.0)
    assert grpo.learner.loss.grpo == shipped.learner.loss.grpo  # nothing else changes


def test_the_loss_temperature_follows_the_sampler() -> None:
    cfg = load_config(CONFIGS_DIR / "echo_toy.yaml", ["rollout.episode.sampling.temperature=0.5"])
    assert cfg.learner.loss.temperature == 0.5  # else every ratio would be exp(logp at T=1 - logp at T=0.5)
    assert load_config(None, ["rollout.episode.sampling.temperature=0"]).learner.loss.temperature == 1.0
    with pytest.raises(ConfigError, match="learner.loss.temperature"):
        load_config(None, ["rollout.episode.sampling.temperature=0.5", "learner.loss.temperature=1.0"])


def test_every_problem_is_reported_at_once_in_the_users_spelling(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("rollout:\n  group_size: 0\n  concurency: 3\npool:\n  max_total: -1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, ["eval.k=[1]"])
    message = str(info.value)
    assert "3 invalid setting(s)" in message
    assert f"in {path}:" in message and "rollout.group_size:" in message
    assert "rollout.concurency: Extra inputs are not permitted; did you mean 'concurrency'?" in message
    assert "pool.max_total:" in message


def test_cross_field_checks_and_malformed_overrides() -> None:
    with pytest.raises(ConfigError, match="eval.k .* exceed rollout.group_size"):
        load_config(None, ["rollout.group_size=2", "eval.k=[1,4]"])
    with pytest.raises(ConfigError, match="expected key.path=value"):
        load_config(None, ["rollout.group_size"])
    with pytest.raises(ConfigError, match="--set policy.type=telepathy: Input tag 'telepathy'"):
        load_config(None, ["policy.type=telepathy"])
    with pytest.raises(ConfigError, match=r"\n  --set policy\.max_batch=0: Input should be greater than or equal to 1"):
        load_config(None, ["policy.type=hf", "policy.max_batch=0"])


def test_a_bad_override_is_blamed_on_the_set_not_the_file() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(CONFIGS_DIR / "rollout_toy.yaml", ["rollout.group_size=0"])
    message = str(info.value)
    assert message.startswith("1 invalid setting(s) on the command line:")
    assert "--set rollout.group_size=0: Input should be greater than or equal to 1" in message
    assert "rollout_toy.yaml" not in message


def test_unknown_keys_get_the_nearest_known_one() -> None:
    with pytest.raises(ConfigError, match=r"--set rollout\.concurency=3: .*; did you mean 'concurrency'\?"):
        load_config(None, ["rollout.concurency=3"])
    with pytest.raises(ConfigError, match=r"did you mean 'max_turns'\?"):
        load_config(None, ["rollout.episode.max_turn=3"])
    with pytest.raises(ConfigError, match=r"did you mean 'max_batch'\?"):  # inside a member of a union
        load_config(None, ["policy.type=hf", "policy.max_bach=3"])
    with pytest.raises(ConfigError) as info:
        load_config(None, ["rollout.zzzz=3"])
    assert "did you mean" not in str(info.value)


def test_provider_options_are_checked_at_load_by_name() -> None:
    with pytest.raises(ConfigError, match="provider 'local': options.imag: Extra inputs are not permitted"):
        load_config(None, ["provider.options.imag=x"])
    with pytest.raises(ConfigError, match="provider 'docker': options.check_image: Input should be a valid boolean"):
        load_config(None, ["provider.type=docker", "provider.options.check_image=maybe"])
    with pytest.raises(ConfigError, match="unknown sandbox provider 'nope'"):
        load_config(None, ["provider.type=nope"])
    config = load_config(
        None, ["provider.type=docker", "provider.options.image=mine:1", "provider.options.check_image=false"]
    )
    assert config.provider.options == {"image": "mine:1", "check_image": False}


def test_public_api_is_pinned() -> None:
    import hillclimb.config as package

    assert package.__all__ == ["RunConfig", "load_config"]
