"""`resolve_model`: what a model string names, found on disk without loading anything.

    "/models/qwen"               a directory holding config.json   ─► ModelSource("directory")
    "./smol.Q4_K_M.gguf"         a GGUF file                       ─► ModelSource("gguf")
    "smollm2-135m-instruct"      a catalog name (trainers.models.catalog): the file `hillclimb model
                                 pull` put under $HILLCLIMB_HOME/models/, else the installed wheel's
                                                                   ─► ModelSource("gguf", packaged=...)
    "Qwen/Qwen2.5-0.5B-Instruct" anything else shaped like a Hub id ─► ModelSource("hub")

Checked in that order, so a local directory named like a Hub id wins. A string that fits none
fails here, listing each place tried, rather than deep inside transformers.
"""

from __future__ import annotations

import importlib.metadata
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from hillclimb.errors import ModelLoadError, ModelNotFoundError
from hillclimb.home import hillclimb_home
from trainers.models.catalog import CATALOG, PackagedModel

__all__ = ["ModelSource", "installed_path", "models_dir", "pulled_path", "resolve_model"]

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
"""`owner/name`, or a legacy id without an owner (`gpt2`)."""


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights are."""

    kind: Literal["directory", "gguf", "hub"]
    location: str
    """A directory, a GGUF file, or a Hub id."""
    packaged: PackagedModel | None = None
    """For a catalog name: the published file, whose digest the bytes found must match."""


def models_dir() -> Path:
    return hillclimb_home() / "models"


def pulled_path(model: PackagedModel) -> Path:
    """Where `hillclimb model pull` puts a catalog model's file."""
    return models_dir() / model.name / model.filename


def installed_path(model: PackagedModel) -> Path | None:
    """The file inside the model's wheel, if that wheel is installed (found from its metadata:
    importing the package itself may need dependencies nobody installed)."""
    try:
        distribution = importlib.metadata.distribution(model.distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
    return Path(str(distribution.locate_file(model.member)))


def resolve_model(name_or_path: str) -> ModelSource:
    """Raises ModelNotFoundError (nothing there) or ModelLoadError (something there, but not a model)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{path} is a directory without config.json, so not a Hugging Face model directory "
                "(write one with save_pretrained, or name a .gguf file)"
            )
        return ModelSource("directory", str(path))
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelLoadError(f"{path} is not a .gguf file: name a GGUF file or a Hugging Face model directory")
        return ModelSource("gguf", str(path))
    packaged = CATALOG.get(name_or_path)
    if packaged is not None:
        return _packaged(packaged)
    if not _HUB_ID.fullmatch(name_or_path) or name_or_path.startswith("."):
        raise ModelNotFoundError(
            f"model {name_or_path!r}: no such file or directory ({path.absolute()}), not a known name "
            f"({', '.join(CATALOG)}), and not shaped like a Hugging Face Hub id (owner/name)"
        )
    return ModelSource("hub", name_or_path)


def _packaged(model: PackagedModel) -> ModelSource:
    pulled, installed = pulled_path(model), installed_path(model)
    for candidate in (pulled, installed):
        if candidate is not None and candidate.is_file():
            return ModelSource("gguf", str(candidate), packaged=model)
    where = f"the installed {model.distribution} wheel ({installed})" if installed else "its wheel (not installed)"
    raise ModelNotFoundError(
        f"model {model.name!r} ({model.distribution}=={model.version}'s {model.filename}) is not on this machine: "
        f"tried {pulled} and {where}; run `hillclimb model pull {model.name}`"
    )
