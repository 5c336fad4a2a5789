"""`converted_directory`: a GGUF file as a Hugging Face model directory, made once and cached.

transformers reads GGUF by dequantizing every tensor (16 s for SmolLM2-135M's 98 MB on a
2-core host) and cannot save its result back as GGUF, so every learner, policy engine and
evaluation would pay that again. The first load instead writes the dequantized model and its
tokenizer (chat template included) with `save_pretrained` to
$HILLCLIMB_HOME/models/converted/<file stem>-<sha256 prefix>/, and every later load reads that
(0.3 s). Keyed by the file's content, an edited file converts anew; a lock file serialises
processes that start together (Ray actors on one node); the directory is written aside and
renamed into place, so it is whole or absent.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from hillclimb.errors import ModelLoadError
from trainers.models.catalog import PackagedModel
from trainers.models.resolve import models_dir, resolve_model

__all__ = ["converted_directory", "file_sha256", "loadable"]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def loadable(name_or_path: str) -> tuple[str, str]:
    """(kind, location) of what `from_pretrained` loads for `name_or_path`: a directory or a Hub
    id, a GGUF file (or catalog name) being converted first."""
    source = resolve_model(name_or_path)
    if source.kind == "gguf":
        return source.kind, str(converted_directory(Path(source.location), source.packaged))
    return source.kind, source.location


def converted_directory(gguf: Path, packaged: PackagedModel | None = None) -> Path:
    """The Hugging Face directory for `gguf`, converting it on first use. A catalog model's
    file must have the recorded digest (ModelLoadError otherwise)."""
    digest = file_sha256(gguf)
    if packaged is not None and digest != packaged.sha256:
        raise ModelLoadError(
            f"{gguf} is not {packaged.name}'s published file: sha256 {digest}, expected {packaged.sha256} "
            f"(delete it and run `hillclimb model pull {packaged.name}`)"
        )
    target = models_dir() / "converted" / f"{gguf.stem}-{digest[:16]}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "config.json").is_file():  # another process may have converted it while we waited
            _convert(gguf, target)
    return target


def _convert(gguf: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        try:
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        except (ValueError, KeyError, OSError) as e:  # a bad magic, an unsupported architecture, a non-causal LM
            raise ModelLoadError(f"{gguf} is not a GGUF causal language model transformers can load: {e}") from None
        # The weights are dequantized now: drop the marker that makes save_pretrained refuse them.
        model.hf_quantizer = None
        del model.config.quantization_config
        model.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
        os.rename(scratch, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
