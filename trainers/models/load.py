"""`load_model` / `load_model_tokenizer`: a `ModelConfig` to a transformers causal LM and a `Tokenizer`.

    TinyModelConfig ─► build_tiny_model (random init, seeded) + ByteTokenizer
    HFModelConfig   ─► AutoModelForCausalLM.from_pretrained + AutoTokenizer wrapped in HFTokenizer

The Hugging Face path reads the Hub (or its cache) for a hub id, and only the disk for a
local directory, so a model saved with `save_pretrained` loads anywhere without a network.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from hillclimb.config.models import HFModelConfig, ModelConfig, TinyModelConfig
from trainers.models.tiny import build_tiny_model
from trainers.tokenizer import ByteTokenizer, HFTokenizer, Tokenizer

__all__ = ["load_model", "load_model_tokenizer"]

_DTYPES: dict[str, Any] = {
    "auto": "auto",
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def load_model(config: ModelConfig, device: str | torch.device = "cpu") -> tuple[PreTrainedModel, Tokenizer]:
    """The model (in eval mode, on `device`) and its tokenizer. A learner calls `.train()` itself."""
    if isinstance(config, TinyModelConfig):
        model: PreTrainedModel = build_tiny_model(config)
    else:
        model = AutoModelForCausalLM.from_pretrained(
            config.name_or_path,
            revision=config.revision,
            dtype=_DTYPES[config.dtype],
            trust_remote_code=config.trust_remote_code,
        )
    return model.to(device).eval(), load_model_tokenizer(config)


def load_model_tokenizer(config: ModelConfig) -> Tokenizer:
    """The tokenizer alone (for processes that render prompts but run no model)."""
    if isinstance(config, TinyModelConfig):
        return ByteTokenizer()
    return HFTokenizer(_hf_tokenizer(config))


def _hf_tokenizer(config: HFModelConfig) -> Any:
    return AutoTokenizer.from_pretrained(
        config.name_or_path, revision=config.revision, trust_remote_code=config.trust_remote_code
    )
