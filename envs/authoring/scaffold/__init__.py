"""`hillclimb env init NAME`: write a new environment package from the templates beside this module.

NAME/
  pyproject.toml       the `hillclimb.envs` entry point NAME = "NAME:ENVIRONMENT"; depends on hillclimb
  NAME/__init__.py     ENVIRONMENT = EnvPackage(env=..., suite=...)
  NAME/env.py          the environment (typed Action / Observation / State) and its FileSuite
  NAME/rubric.py       score(task_row, state) -> reward, run inside the environment server
  NAME/tasks.jsonl     train and held-out tasks, with oracle actions
  tests/test_env.py    the environment in process: oracles solve every task, the rubric scores
  train.yaml           `hillclimb train train.yaml`: a few steps of a tiny model on it, locally
  README.md
"""

from __future__ import annotations

import importlib.util
import keyword
import sys
from importlib.metadata import packages_distributions
from importlib.resources import files
from pathlib import Path
from string import Template

from hillclimb.errors import ConfigError

_FILES = {
    "pyproject.toml": "pyproject.toml.txt",
    "{name}/__init__.py": "init.py.txt",
    "{name}/env.py": "env.py.txt",
    "{name}/rubric.py": "rubric.py.txt",
    "{name}/tasks.jsonl": "tasks.jsonl.txt",
    "tests/test_env.py": "test_env.py.txt",
    "train.yaml": "train.yaml.txt",
    "README.md": "README.md.txt",
}
"""Written path (in the new directory) -> template beside this module."""


def write_package(name: str, directory: Path) -> list[Path]:
    """Write the package `name` into `directory`, which must not exist yet; returns the files written."""
    if not name.isidentifier() or keyword.iskeyword(name) or not name.islower():
        raise ConfigError(f"{name!r} is not a package name: use lowercase letters, digits and _ (e.g. my_env)")
    if directory.exists():
        raise ConfigError(f"{directory} already exists: choose another NAME or --dir (nothing was overwritten)")
    if found := _importable_as(name):
        raise ConfigError(
            f"{name!r} is already importable: {found}. A package named so would shadow it or be shadowed by it, "
            "and hillclimb would find only one of the two: choose another NAME (nothing was written)"
        )
    values = {"name": name, "Class": _class_prefix(name)}
    written = []
    for relative, template in _FILES.items():
        path = directory / relative.format(name=name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(Template(files(__package__).joinpath(template).read_text()).substitute(values))
        written.append(path)
    return written


def _importable_as(name: str) -> str | None:
    """What `import name` finds here, in words (the working directory is searched first in a
    `hillclimb` command); None for nothing, or for plain directories, which any package outranks."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:  # nothing, or a namespace package
        return None
    if name in sys.stdlib_module_names:
        return f"Python's standard library ({spec.origin})"  # origin 'built-in' or 'frozen' for some
    owners = sorted(set(packages_distributions().get(name, [])))
    return f"{' and '.join(owners)}'s module ({spec.origin})" if owners else f"the module {spec.origin}"


def _class_prefix(name: str) -> str:
    """'demo_env' -> 'Demo' (classes DemoEnv, DemoAction, ...); 'words' -> 'Words'."""
    stem = name.removesuffix("_env") or name
    return "".join(part.capitalize() for part in stem.split("_") if part) or "My"
