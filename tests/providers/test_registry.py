"""A provider is named in a config and built from its options model: the built-ins' models
(`hillclimb.config.providers`) say exactly what their constructors take; a plugin registers its
model by entry point, or has its options checked against its constructor when it is built.

Plugins here are real distributions in `tmp_path` (a `.dist-info` with its `entry_points.txt`),
found by `importlib.metadata` as in production; only those a test installs are seen."""

from __future__ import annotations

import inspect
import sys
import textwrap
from collections.abc import Iterator
from importlib.metadata import EntryPoints, distributions
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from hillclimb.config import providers as options_registry
from hillclimb.config.providers import BUILTIN_OPTIONS, PluginOptions, options_model
from hillclimb.errors import TargetNotFoundError
from providers import registry
from providers.registry import make_provider, provider_class

PLUGIN = """
from pydantic import BaseModel, ConfigDict, Field

class CloudOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    region: str
    replicas: int = Field(default=1, ge=1)

class CloudProvider:
    name = "cloud"
    options_model = CloudOptions
    run_liveness = None

    def __init__(self, region: str, replicas: int = 1) -> None:
        self.options = {"region": region, "replicas": replicas}

class BareProvider:
    name = "bare"
    run_liveness = None

    def __init__(self, *, zone: str = "a", size: int = 2) -> None:
        self.options = {"zone": zone, "size": size}
"""


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on sys.path holding the `cloudpkg` plugin; only its distributions' entry points are seen."""

    def entry_points(*, group: str) -> EntryPoints:
        found = (ep for dist in distributions(path=[str(tmp_path)]) for ep in dist.entry_points)
        return EntryPoints(found).select(group=group)

    monkeypatch.setattr(options_registry, "entry_points", entry_points)
    monkeypatch.setattr(registry, "entry_points", entry_points)
    (tmp_path / "cloudpkg.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path))
    info = tmp_path / "cloudpkg-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: cloudpkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[hillclimb.providers]\ncloud = cloudpkg:CloudProvider\nbare = cloudpkg:BareProvider\n"
        "[hillclimb.provider_options]\ncloud = cloudpkg:CloudOptions\n"
    )
    yield tmp_path
    sys.modules.pop("cloudpkg", None)


def _keyword_parameters(cls: type) -> dict[str, Any]:
    params = inspect.signature(cls.__init__).parameters.values()
    return {p.name: p.default for p in params if p.name != "self"}


@pytest.mark.parametrize("name", sorted(BUILTIN_OPTIONS))
def test_each_builtin_model_is_its_constructors_keyword_parameters(name: str) -> None:
    cls = provider_class(name)
    model = options_model(name)
    assert cls.options_model is model
    assert {field: info.default for field, info in model.model_fields.items()} == _keyword_parameters(cls)


@pytest.mark.parametrize(
    ("options", "missing"),
    [
        ({}, "subscription_id, resource_group, environment_id, location, image"),
        ({"subscription_id": "s", "resource_group": "g"}, "environment_id, location, image"),
        ({"subscription_id": "s", "resource_group": "g", "environment_id": "e", "location": "l"}, "image"),
    ],
)
def test_aca_needs_everything_a_pool_is_made_from(options: dict[str, str], missing: str) -> None:
    with pytest.raises(ValidationError, match=f"the aca provider needs {missing} to make its session pools"):
        options_model("aca").model_validate(options)


def test_aca_takes_a_pool_made_by_hand_or_a_whole_pool_and_checks_each_bound() -> None:
    aca = options_model("aca")
    assert aca.model_validate({"pool_endpoint": "https://p"}).cooldown_s == 600
    pool = {"subscription_id": "s", "resource_group": "g", "environment_id": "e", "location": "l", "image": "i"}
    assert aca.model_validate(pool).pool_endpoint is None
    with pytest.raises(ValidationError) as caught:
        aca.model_validate({"pool_endpoint": "https://p", "cooldown_s": 10, "arm_polling_s": -1, "pool_prefix": "A-"})
    assert {error["loc"] for error in caught.value.errors()} == {("cooldown_s",), ("arm_polling_s",), ("pool_prefix",)}


def test_an_unknown_provider_is_named_with_the_known_ones(site: Path) -> None:
    with pytest.raises(TargetNotFoundError) as caught:
        options_model("nope")
    known = "aca, bare, cloud, docker, kubernetes, local"
    assert str(caught.value) == f"unknown sandbox provider 'nope'; available: {known}"


def test_a_provider_is_built_from_its_options_checked_and_converted(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="uid_bse"):
        make_provider("local", root=tmp_path, uid_bse=1)
    provider = make_provider("local", root=tmp_path, uid_base="300000")  # as `-o uid_base=300000` gives it
    assert provider.uid_base == 300_000


def test_a_plugin_registers_its_model_and_is_built_from_it(site: Path) -> None:
    assert options_model("cloud").__name__ == "CloudOptions"
    with pytest.raises(ValidationError, match="replicas"):
        options_model("cloud").model_validate({"region": "eu", "replicas": 0})  # at config load
    assert make_provider("cloud", region="eu", replicas="3").options == {"region": "eu", "replicas": 3}


def test_a_plugin_without_a_model_is_checked_against_its_constructor_when_built(site: Path) -> None:
    assert options_model("bare") is PluginOptions  # config load cannot import it: anything passes there
    assert make_provider("bare", size="4").options == {"zone": "a", "size": 4}
    with pytest.raises(ValidationError, match="zon"):
        make_provider("bare", zon="b")
