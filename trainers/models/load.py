"""`load_model` / `load_model_tokenizer`: a `ModelConfig` to a transformers causal LM and a `Tokenizer`.

    TinyModelConfig ─► build_tiny_model (random init, seeded) + ByteTokenizer
    HFModelConfig   ─► model_location (a directory, a GGUF converted once, a catalog name, a Hub id)
                    ─► AutoModelForCausalLM.from_pretrained + AutoTokenizer wrapped in HFTokenizer

`load_model_skeleton` builds the same model on the `meta` device, from its config alone: no
weight is read or stored. Sharded learners make it, shard it, and only then load the weights.

The Hugging Face path reads the Hub (or its cache) for a hub id, and only the disk otherwise,
so a model saved with `save_pretrained`, a GGUF file or a pulled catalog model loads without a network.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from hillclimb.config.models import HFModelConfig, ModelConfig, TinyModelConfig
from hillclimb.errors import ModelLoadError, ModelNotFoundError
from trainers.models.gguf import loadable
from trainers.models.tiny import build_tiny_model
from trainers.tokenizer import ByteTokenizer, HFTokenizer, Tokenizer

__all__ = ["load_model", "load_model_skeleton", "load_model_tokenizer", "model_location"]

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
        model = _from_pretrained(AutoModelForCausalLM, config, dtype=_DTYPES[config.dtype])
    return model.to(device).eval(), load_model_tokenizer(config)


def load_model_skeleton(config: ModelConfig) -> tuple[PreTrainedModel, Tokenizer]:
    """The model `load_model` gives (same class, parameter names, dtypes, tied weights), on the
    `meta` device: shapes without storage. Its non-persistent buffers (rotary frequencies) are
    meta too: whoever materialises it must fill them."""
    with torch.device("meta"):
        if isinstance(config, TinyModelConfig):
            model: PreTrainedModel = build_tiny_model(config)
        else:
            # `auto` is the dtype the config records, which from_config uses when given none
            dtype = {} if config.dtype == "auto" else {"dtype": _DTYPES[config.dtype]}
            architecture = _from_pretrained(AutoConfig, config)
            model = AutoModelForCausalLM.from_config(architecture, trust_remote_code=config.trust_remote_code, **dtype)
    return model.eval(), load_model_tokenizer(config)


def load_model_tokenizer(config: ModelConfig) -> Tokenizer:
    """The tokenizer alone (for processes that render prompts but run no model)."""
    if isinstance(config, TinyModelConfig):
        return ByteTokenizer()
    return HFTokenizer(_from_pretrained(AutoTokenizer, config))


def model_location(config: HFModelConfig) -> str:
    """What `from_pretrained` (or vLLM) should load for `config`: a directory, or a Hub id."""
    return loadable(config.name_or_path)[1]


def _from_pretrained(auto: Any, config: HFModelConfig, **kwargs: Any) -> Any:
    kind, location = loadable(config.name_or_path)
    try:
        return auto.from_pretrained(
            location, revision=config.revision, trust_remote_code=config.trust_remote_code, **kwargs
        )
    except OSError as e:  # files missing: from the Hub (or its cache), or from a local directory
        if kind != "hub":
            raise ModelLoadError(f"model {config.name_or_path!r} ({location}) is incomplete: {e}") from None
        raise ModelNotFoundError(
            f"model {config.name_or_path!r} is not a local path, not a known name, and the Hugging Face Hub "
            f"could not provide it: {e}"
        ) from None
    except ValueError as e:  # transformers' "Unrecognized configuration class ... for AutoModelForCausalLM"
        if "Unrecognized configuration class" not in str(e):
            raise
        first_line = str(e).splitlines()[0]  # the rest lists every causal-LM class transformers has
        message = f"model {config.name_or_path!r} ({location}) is not a causal language model: {first_line}"
        raise ModelLoadError(message) from None
