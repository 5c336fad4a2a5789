"""Reading a run's config or catching a typed error loads none of the heavy machinery:
not the env server, not pyarrow or numpy, not torch or Ray (a CLI that only validates a
config, or a plugin that only raises our errors, starts in a fraction of a second)."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

HEAVY = ("pyarrow", "numpy", "torch", "ray", "envs.server.env_server", "uvloop")


@pytest.mark.parametrize("module", ["hillclimb.config", "hillclimb.errors", "hillclimb.provider_errors", "envs"])
def test_importing_stays_light(module: str) -> None:
    probe = f"import sys, {module}; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]", f"importing {module} loaded {done.stdout.strip()}"


PROJECT = ("hillclimb", "envs", "providers", "orchestrator", "trainers")
RUNTIME = ("envs", "providers", "orchestrator", "trainers", "ray", "torch", "uvloop")


def _loaded_after(code: str) -> list[str]:
    """The project's modules, and any of RUNTIME's, loaded in a fresh interpreter by `code`."""
    probe = f"import sys\n{code}\nprint(sorted(m for m in sys.modules if m.partition('.')[0] in {PROJECT + RUNTIME!r}))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    return ast.literal_eval(done.stdout.strip().splitlines()[-1])


def test_the_config_schema_is_the_ground_floor_alone() -> None:
    loaded = _loaded_after("import hillclimb.config")
    assert not [m for m in loaded if m.partition(".")[0] in RUNTIME], loaded
    schema = ["buffer", "learner", "ledger", "load", "log", "losses", "models", "policy", "providers", "rollout"]
    schema += ["run", "sandboxes"]
    ground = ["hillclimb", "hillclimb.config", "hillclimb.errors", "hillclimb.splits"]
    assert loaded == sorted(ground + [f"hillclimb.config.{m}" for m in schema])


def test_help_loads_no_runtime_module() -> None:
    """`hillclimb --help` imports the CLI's own modules and nothing it drives."""
    code = "from orchestrator.cli import app\ntry:\n    app(['--help'])\nexcept SystemExit:\n    pass"
    loaded = _loaded_after(code)
    cli = {"orchestrator", "orchestrator.cli", "orchestrator.console", "orchestrator.commands"}
    runtime = [m for m in loaded if m.partition(".")[0] in RUNTIME and m not in cli]
    assert all(m.startswith("orchestrator.commands.") for m in runtime), runtime


def test_the_package_still_exports_its_names() -> None:
    import envs

    assert envs.EnvServer.__module__ == "envs.server.env_server"
    assert envs.EnvClient.__module__ == "envs.client.ws_client"
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        envs.Nope  # noqa: B018
