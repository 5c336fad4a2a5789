"""`write_package` (`hillclimb env init`) refuses a name that `import` already finds: the new
package would shadow that module, or be shadowed by it, and hillclimb would find only one."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from envs.authoring.scaffold import write_package
from hillclimb.errors import ConfigError


@pytest.mark.parametrize(
    ("name", "found"),
    [
        ("envs", r"'envs' is already importable: hillclimb's module \(/\S+/envs/__init__\.py\)"),
        ("yaml", r"'yaml' is already importable: PyYAML's module \(/\S+/yaml/__init__\.py\)"),
        ("json", r"'json' is already importable: Python's standard library \(/\S+/json/__init__\.py\)"),
        ("sys", r"'sys' is already importable: Python's standard library \(built-in\)"),
    ],
)
def test_a_name_import_already_finds_is_refused_saying_by_what(tmp_path: Path, name: str, found: str) -> None:
    with pytest.raises(ConfigError, match=found + r"\. A package named so would shadow it or be shadowed by it"):
        write_package(name, tmp_path / name)
    assert not (tmp_path / name).exists()


def test_a_module_on_the_path_is_named_by_its_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mine.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=rf"'mine' is already importable: the module {tmp_path}/mine\.py\. "):
        write_package("mine", tmp_path / "new")


def test_a_plain_directory_of_that_name_shadows_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A directory without `__init__.py` is a namespace package, which any regular package outranks."""
    (tmp_path / "plain_env").mkdir()
    monkeypatch.syspath_prepend(str(tmp_path))
    written = write_package("plain_env", tmp_path / "project")
    assert tmp_path / "project" / "plain_env" / "env.py" in written


def test_the_scaffolds_training_config_states_echos_lambda_and_why(tmp_path: Path) -> None:
    """The main job's λ is 1.0 (configs/echo_toy.yaml); the scaffold's, meant for a real model, says why not."""
    from hillclimb.config import load_config
    from hillclimb.config.losses import ConstantLambda

    write_package("lambda_env", tmp_path / "project")
    path = tmp_path / "project" / "train.yaml"
    assert yaml.safe_load(path.read_text())["learner"] == {"echo_lambda": 0.005}
    assert load_config(path).learner.loss.echo.schedule == ConstantLambda(value=0.005)
    comment = " ".join(line.strip(" #") for line in path.read_text().splitlines() if line.lstrip().startswith("#"))
    assert "configs/echo_toy.yaml uses 1.0" in comment
