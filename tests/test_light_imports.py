"""Reading a run's config or catching a typed error loads none of the heavy machinery:
not the env server, not pyarrow or numpy, not torch or Ray (a CLI that only validates a
config, or a plugin that only raises our errors, starts in a fraction of a second)."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("pyarrow", "numpy", "torch", "ray", "envs.server.env_server", "uvloop")


@pytest.mark.parametrize("module", ["orchestrator.config", "hillclimb.errors", "hillclimb.provider_errors", "envs"])
def test_importing_stays_light(module: str) -> None:
    probe = f"import sys, {module}; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]", f"importing {module} loaded {done.stdout.strip()}"


def test_the_package_still_exports_its_names() -> None:
    import envs

    assert envs.EnvServer.__module__ == "envs.server.env_server"
    assert envs.EnvClient.__module__ == "envs.client.ws_client"
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        envs.Nope  # noqa: B018
