"""`hillclimb env init scaffolded_env`, as a user runs it: the scaffold's own tests pass, `hillclimb env
serve` serves it from its directory (no PYTHONPATH) over loopback, and once pip has installed it,
its `hillclimb.envs` entry point makes `scaffolded_env` a name like a built-in. (A name of its own:
the tutorial's `demo_env` may well be installed where the tests run, and `env init` refuses it.)"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from envs.client.ws_client import EnvClient
from hillclimb.config import load_config

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow

FILES = [
    "pyproject.toml",
    "scaffolded_env/__init__.py",
    "scaffolded_env/env.py",
    "scaffolded_env/rubric.py",
    "scaffolded_env/tasks.jsonl",
    "tests/test_env.py",
    "train.yaml",
    "README.md",
]


def _environ(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "COLUMNS": "300", **extra}


HILLCLIMB = (sys.executable, "-P", "-m", "orchestrator")
"""The `hillclimb` command as its script runs it: `-P`, no directory of its own on `sys.path`
(`python -m` alone would put the working directory there, as hillclimb itself must)."""


def _hillclimb(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HILLCLIMB, *args], cwd=cwd, env=_environ(**env), capture_output=True, text=True)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    parent = tmp_path_factory.mktemp("user")
    done = _hillclimb("env", "init", "scaffolded_env", cwd=parent)
    assert done.returncode == 0, done.stdout + done.stderr
    return parent / "scaffolded_env"


@pytest.fixture(scope="module")
def installed(project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The scaffold pip-installed (offline, no dependencies) into a directory of its own."""
    target = tmp_path_factory.mktemp("site")
    target.chmod(0o755)  # readable by local sandboxes' own uids, as a site-packages is (pytest made it 0700)
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-build-isolation"]
    done = subprocess.run([*pip, "--target", str(target), str(project)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return target


def test_init_writes_the_package_and_refuses_to_overwrite_or_misname(project: Path) -> None:
    assert sorted(str(p.relative_to(project)) for p in project.rglob("*") if p.is_file()) == sorted(FILES)
    pyproject = (project / "pyproject.toml").read_text()
    assert '[project.entry-points."hillclimb.envs"]\nscaffolded_env = "scaffolded_env:ENVIRONMENT"' in pyproject
    assert (
        "class ScaffoldedEnv(Environment[ScaffoldedAction, ScaffoldedObservation, ScaffoldedState])"
        in (project / "scaffolded_env/env.py").read_text()
    )
    train = load_config(project / "train.yaml", [])  # what `hillclimb train train.yaml` would run
    assert (train.env.name, train.run.name, train.policy.type, train.train.steps) == (
        "scaffolded_env",
        "scaffolded_env",
        "hf",
        3,
    )
    again = _hillclimb("env", "init", "scaffolded_env", "--dir", str(project), cwd=project.parent)
    assert again.returncode == 2 and "already exists" in again.stderr and "nothing was overwritten" in again.stderr
    elsewhere = project.parent / "projects" / "words"
    assert _hillclimb("env", "init", "words", "--dir", str(elsewhere), cwd=project.parent).returncode == 0
    assert "class WordsEnv(Environment" in (elsewhere / "words/env.py").read_text()
    bad = _hillclimb("env", "init", "Demo-Env", cwd=project.parent)
    assert bad.returncode == 2 and "'Demo-Env' is not a package name" in bad.stderr
    assert not (project.parent / "Demo-Env").exists()
    shadowing = _hillclimb("env", "init", "envs", cwd=project.parent)  # hillclimb's own top-level `envs`
    assert shadowing.returncode == 2 and "'envs' is already importable: hillclimb's module" in shadowing.stderr
    assert not (project.parent / "envs").exists()


def test_the_scaffolds_own_tests_pass_uninstalled(project: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-P", "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=project, env=_environ(), capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0 and "12 passed" in done.stdout, done.stdout + done.stderr


def test_serving_it_by_a_bare_module_name_uninstalled_names_the_package_object(project: Path) -> None:
    done = _hillclimb("env", "serve", "scaffolded_env", "--no-auth", cwd=project)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "It exports 'scaffolded_env:ENVIRONMENT': serve that." in " ".join(done.stderr.split())


@pytest.fixture
async def served(project: Path) -> AsyncIterator[str]:
    """`hillclimb env serve scaffolded_env:ENVIRONMENT` from the project directory, without PYTHONPATH."""
    child = await asyncio.create_subprocess_exec(
        *HILLCLIMB, "env", "serve", "scaffolded_env:ENVIRONMENT", "--port", "0", "--no-auth",
        cwd=project, env=_environ(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        seen = ""
        while (match := re.search(r"on (ws://127\.0\.0\.1:\d+/ws)", seen)) is None:
            line = await asyncio.wait_for(child.stdout.readline(), 30)
            assert line, f"the server exited: {seen}"
            seen += line.decode()
        yield match.group(1)
    finally:
        child.terminate()
        await child.wait()


async def test_env_serve_runs_it_from_its_directory(served: str) -> None:
    async with EnvClient(served, connect_timeout_s=5.0) as client:
        reset = await client.reset(task_id="say-river")
        assert reset.observation["text"] == "Reply with exactly this word: river"
        wrong = await client.step({"text": "lake"})
        assert (wrong.done, wrong.observation["text"]) == (False, "not yet: reply with the word only")
        right = await client.step({"text": "River"})
        assert (right.done, right.reward, right.observation["text"]) == (True, 1.0, "correct")


def test_installed_its_entry_point_names_it_everywhere(installed: Path, tmp_path: Path) -> None:
    script = (
        "from envs.authoring.tasks import load_suite; from envs.server.targets import runtime_for\n"
        "suite = load_suite('scaffolded_env')\n"
        "print(suite.env, [t.id for t in suite.tasks('heldout')], runtime_for('scaffolded_env').env_cls.__name__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=_environ(PYTHONPATH=str(installed)),
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.stdout == "scaffolded_env ['say-tiger', 'say-piano', 'say-maple'] ScaffoldedEnv\n", done.stderr
    broken = tmp_path / "broken-0.1.dist-info"  # a package whose entry point names a module it lacks
    broken.mkdir()
    (broken / "METADATA").write_text("Metadata-Version: 2.1\nName: broken\nVersion: 0.1\n")
    (broken / "entry_points.txt").write_text("[hillclimb.envs]\nbroken = broken_missing:ENVIRONMENT\n")
    listed = _hillclimb("env", "list", cwd=tmp_path, PYTHONPATH=f"{installed}{os.pathsep}{tmp_path}")
    assert listed.returncode == 0, listed.stderr
    rows = " ".join(listed.stdout.split())
    assert "│ scaffolded_env │ scaffolded_env:ENVIRONMENT │ scaffolded_env.env:ScaffoldedEnv │ yes │" in rows, (
        listed.stdout
    )
    assert "│ broken │ broken_missing:ENVIRONMENT │ - │ - │ does not load" in rows, listed.stdout


@pytest.mark.root
def test_env_demo_plays_a_tasks_oracle_in_a_local_sandbox(installed: Path) -> None:
    done = _hillclimb("env", "demo", "scaffolded_env", "--task", "say-river", cwd=REPO, PYTHONPATH=str(installed))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[action] river" in done.stdout and "correct" in done.stdout and "[reward] 1 (done=True)" in done.stdout


@pytest.mark.root
def test_uninstalled_its_import_path_plays_in_a_local_sandbox_from_its_directory(project: Path) -> None:
    """The sandbox's server finds the package where the command did: in the working directory."""
    project.parent.chmod(0o755)  # readable by local sandboxes' own uids (pytest made it 0700)
    done = _hillclimb("env", "demo", "scaffolded_env:ENVIRONMENT", "--task", "say-river", cwd=project)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[action] river" in done.stdout and "[reward] 1 (done=True)" in done.stdout


@pytest.mark.ray
@pytest.mark.root
def test_a_rollout_names_it_in_the_config_and_its_sandboxes_serve_it(installed: Path, tmp_path: Path) -> None:
    """`env.name: scaffolded_env` on local sandboxes with the scripted oracle: every task solved."""
    settings = [
        "env.name=scaffolded_env",
        f"run.dir={tmp_path}",
        "rollout.group_size=1",
        "eval.k=[1]",
        "ray.num_workers=1",
    ]
    args = [arg for setting in settings for arg in ("--set", setting)]
    toy = REPO / "configs" / "rollout_toy.yaml"
    # From outside the repository, as a user's project runs it: with an editable hillclimb, the
    # sandboxes' server imports the envs modules a user's environment needs from the zygote's preload.
    done = _hillclimb("rollout", str(toy), *args, cwd=tmp_path, PYTHONPATH=str(installed))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = re.findall(r"│ (train|heldout)\s+│\s+(\d+)\s+│\s+\d+\s+│\s+([\d.]+)", done.stdout)
    assert sorted(rows) == [("heldout", "3", "1.000"), ("train", "6", "1.000")], done.stdout[-3000:]
