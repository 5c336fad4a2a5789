"""One way to name an environment: a built-in, an installed package's `hillclimb.envs` entry point,
or an import path, each resolving to an `EnvPackage` (the class a sandbox serves and its tasks).

The installed packages are real distributions on `sys.path` (a `.dist-info` with its
`entry_points.txt`, as pip writes one), found by `importlib.metadata` as in production, but only
those a test installs: what a user installed beside hillclimb (the tutorial's `demo_env`) is not
theirs to see."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from importlib.metadata import EntryPoints, distributions
from pathlib import Path

import pytest

import envs
from envs.authoring import registry
from envs.authoring.file_suite import FileSuite
from envs.authoring.packages import EnvPackage
from envs.authoring.registry import BUILTIN_ENVS, find_env, installed_envs, load_suite, resolve_env_class
from envs.authoring.tasks import MissingOracleError, Task, require_oracles
from envs.builtin.toy_terminal import ToyTerminalEnv
from envs.builtin.toy_terminal.tasks import SUITE as TOY_SUITE
from envs.server.targets import env_class_of, runtime_for
from hillclimb.errors import EnvModuleNotFoundError, TargetNotFoundError

PACKAGE = """
from envs.authoring.base import Action, Environment, Observation, State
from envs.authoring.file_suite import FileSuite, TaskRow
from envs.authoring.file_suite import FileSuite
from envs.authoring.packages import EnvPackage

class WordAction(Action):
    text: str

class WordObservation(Observation):
    text: str = ""

class WordEnv(Environment[WordAction, WordObservation, State]):
    def reset(self, seed=None, episode_id=None, **kwargs) -> WordObservation:
        return WordObservation(text="say hi")

    def step(self, action: WordAction, timeout_s=None) -> WordObservation:
        return WordObservation(text=action.text, done=True, reward=1.0)

    @property
    def state(self) -> State:
        return State()

ROWS = [TaskRow(id="hi", split="train", prompt="say hi"), TaskRow(id="yo", split="heldout", prompt="say yo")]
SUITE = FileSuite("wordpkg", ROWS, action=WordAction, observation=WordObservation)
ENVIRONMENT = EnvPackage(env="wordpkg:WordEnv", suite=SUITE)
LAZY = EnvPackage(env="wordpkg:WordEnv", suite="wordpkg:SUITE")
NOT_AN_ENV = 42
"""


@pytest.fixture(autouse=True)
def installed_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Entry points of the distributions in `tmp_path` (where `_install` writes them) alone."""

    def entry_points(*, group: str) -> EntryPoints:
        return EntryPoints(ep for dist in distributions(path=[str(tmp_path)]) for ep in dist.entry_points).select(
            group=group
        )

    monkeypatch.setattr(registry, "entry_points", entry_points)


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on sys.path holding the `wordpkg` package; distributions are added per test."""
    (tmp_path / "wordpkg.py").write_text(textwrap.dedent(PACKAGE))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("wordpkg", None)


def _install(site: Path, dist: str, entry_points: dict[str, str]) -> None:
    """Write the metadata pip leaves for an installed distribution with these hillclimb.envs entry points."""
    info = site / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "".join(f"{name} = {value}\n" for name, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[hillclimb.envs]\n{lines}")


def test_builtins_are_packages_of_the_same_kind_holding_import_paths_only() -> None:
    assert (envs.EnvPackage, envs.FileSuite, envs.find_env) == (EnvPackage, FileSuite, find_env)
    assert all(isinstance(p, EnvPackage) and isinstance(p.suite, str | None) for p in BUILTIN_ENVS.values())
    toy = EnvPackage("envs.builtin.toy_terminal:ToyTerminalEnv", "envs.builtin.toy_terminal.tasks:SUITE")
    assert find_env("toy_terminal") == toy
    assert resolve_env_class("toy_terminal") is ToyTerminalEnv
    assert load_suite("toy_terminal") is TOY_SUITE
    with pytest.raises(TargetNotFoundError) as caught:  # `hillclimb env demo probe`
        load_suite("probe")
    assert str(caught.value) == (
        "the built-in environment 'probe' has no task suite: it is served (`hillclimb env serve probe`), not "
        "rolled out; the built-ins with tasks are inventory, terminal, toy_terminal"
    )


def test_an_unknown_name_lists_what_was_tried_and_the_closest_names() -> None:
    with pytest.raises(TargetNotFoundError) as caught:
        find_env("toy_termnal")
    message = str(caught.value)
    assert "not a built-in (inventory, probe, terminal, toy_terminal)" in message
    assert "not an installed 'hillclimb.envs' entry point (none installed)" in message
    assert "import path 'package.module:Name'" in message
    assert message.endswith("did you mean 'toy_terminal' or 'terminal'?")


def test_an_import_path_names_a_package_object_or_a_bare_class(site: Path) -> None:
    import wordpkg

    assert find_env("wordpkg:ENVIRONMENT") is wordpkg.ENVIRONMENT
    assert resolve_env_class("wordpkg:ENVIRONMENT") is wordpkg.WordEnv
    # Found under another name than its own, the suite carries the name it was found by: the
    # groups it makes name the environment so that the scripted policy finds it again.
    suite = load_suite("wordpkg:ENVIRONMENT")
    assert (suite.env, [t.id for t in suite.tasks("heldout")]) == ("wordpkg:ENVIRONMENT", ["yo"])
    assert suite.parse_action("hello") == {"text": "hello"}
    assert load_suite("wordpkg:LAZY").tasks("train") == wordpkg.SUITE.tasks("train")
    assert find_env("wordpkg:WordEnv") == EnvPackage("wordpkg:WordEnv")
    assert runtime_for("wordpkg:WordEnv").action_cls is wordpkg.WordAction  # a bare class still serves
    with pytest.raises(TargetNotFoundError, match=r"bare environment class.*EnvPackage\(env=.*hillclimb env init"):
        load_suite("wordpkg:WordEnv")


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("wordpkg:ENVIROMENT", "'wordpkg' has no attribute 'ENVIROMENT'; did you mean 'ENVIRONMENT'?"),
        (
            "wordpkg:NOT_AN_ENV",
            "import path 'wordpkg:NOT_AN_ENV' names an object of type int, not an EnvPackage or an environment class",
        ),
        ("nopkg_here:ENVIRONMENT", "cannot import 'nopkg_here' for environment 'nopkg_here:ENVIRONMENT'"),
    ],
)
def test_a_bad_import_path_says_what_is_wrong(site: Path, target: str, message: str) -> None:
    with pytest.raises(TargetNotFoundError, match=message):
        find_env(target)


def test_a_module_found_nowhere_is_told_apart_from_a_module_it_imports(site: Path) -> None:
    with pytest.raises(EnvModuleNotFoundError, match=r"Run hillclimb from the directory that holds nopkg_here") as e:
        find_env("nopkg_here.tasks:ENVIRONMENT")
    assert e.value.module == "nopkg_here" and isinstance(e.value, ModuleNotFoundError)
    (site / "needs_dep.py").write_text("import dep_not_installed\n")
    with pytest.raises(TargetNotFoundError, match="No module named 'dep_not_installed'") as other:
        find_env("needs_dep:ENVIRONMENT")
    assert not isinstance(other.value, EnvModuleNotFoundError)  # it was found: moving it would not help
    with pytest.raises(TargetNotFoundError, match="No module named 'wordpkg.tasks'") as other:
        find_env("wordpkg.tasks:ENVIRONMENT")
    assert not isinstance(other.value, EnvModuleNotFoundError)
    sys.modules.pop("needs_dep", None)


def test_an_installed_entry_point_is_a_name_like_a_builtin(site: Path) -> None:
    import wordpkg

    _install(site, "wordpkg", {"words": "wordpkg:ENVIRONMENT", "toy_terminal": "wordpkg:ENVIRONMENT"})
    assert set(installed_envs()) == {"words"}  # a built-in name is never shadowed
    assert find_env("words") is wordpkg.ENVIRONMENT
    assert load_suite("words").env == "words"
    assert resolve_env_class("toy_terminal") is ToyTerminalEnv
    with pytest.raises(TargetNotFoundError, match=r"entry point \(words\).*did you mean 'words'\?"):
        find_env("word")


def test_an_entry_point_wins_over_a_module_of_the_same_name(site: Path) -> None:
    """`env serve wordpkg` would otherwise look for an OpenEnv create_app call in the module."""
    import wordpkg

    _install(site, "wordpkg", {"wordpkg": "wordpkg:ENVIRONMENT"})
    assert env_class_of("wordpkg") is wordpkg.WordEnv
    assert runtime_for("wordpkg").env_cls is wordpkg.WordEnv


def test_an_entry_point_that_does_not_load_names_itself(site: Path) -> None:
    _install(site, "brokenpkg", {"broken": "brokenpkg_missing:ENVIRONMENT"})
    with pytest.raises(TargetNotFoundError, match="entry point broken = 'brokenpkg_missing:ENVIRONMENT' does not load"):
        find_env("broken")


def test_oracle_actions_are_optional_and_what_replays_them_names_the_tasks_and_the_fix() -> None:
    tasks = [Task(id="a", split="train", prompt="p"), Task(id="b", split="train", prompt="p", oracle=("x",))]
    assert tasks[0].oracle == ()
    require_oracles(tasks[1:], "the warm-up", "set train.warmup_steps=0")
    with pytest.raises(MissingOracleError, match=r"the warm-up replays .* 1 task\(s\) have none: a\. .*warmup_steps=0"):
        require_oracles(tasks, "the warm-up", "set train.warmup_steps=0")
