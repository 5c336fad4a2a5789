"""Models: a tiny random-init causal LM for CPU runs, or any Hugging Face causal LM.

    ModelConfig (tiny | hf) ─► load_model(config, device) ─► (transformers model, Tokenizer)

The configs import only pydantic; `load_model`, `load_model_tokenizer` and `build_tiny_model` load
torch and transformers on first use, so validating a run config stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from hillclimb.config.models import HFModelConfig, ModelConfig, TinyModelConfig

if TYPE_CHECKING:
    from trainers.models.load import load_model, load_model_tokenizer
    from trainers.models.tiny import build_tiny_model

_LAZY = {"load_model": "load", "load_model_tokenizer": "load", "build_tiny_model": "tiny"}

__all__ = ["HFModelConfig", "ModelConfig", "TinyModelConfig", "build_tiny_model", "load_model", "load_model_tokenizer"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"trainers.models.{module}"), name)
    globals()[name] = value
    return value
