"""`model_shape`: a model's dimensions from its config.json alone, never its weights, never the network.

    TinyModelConfig                ─► its own fields (byte vocabulary)
    HFModelConfig: a directory     ─► DIR/config.json
                   a GGUF / catalog ─► the config.json of its converted directory (`hillclimb model pull`
                                      writes it once), found by the file's name
                   a Hub id        ─► config.json in the local Hugging Face cache

`ModelShape.parameters` counts a Llama-style decoder (Llama, Qwen2, Mistral): embeddings, per
layer the attention projections (grouped-query: K and V have `kv_heads` heads; Qwen2 adds biases
to Q, K and V), a gated MLP of three matrices and two RMSNorms, a final norm, and an LM head
unless it is tied to the embeddings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hillclimb.config.models import ModelConfig, TinyModelConfig
from hillclimb.errors import ModelNotFoundError
from trainers.models.resolve import models_dir, resolve_model
from trainers.tokenizer import ByteTokenizer

__all__ = ["DTYPE_BYTES", "ModelShape", "model_shape"]

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
_QKV_BIAS = {"qwen2"}
"""Model types whose Q, K and V projections carry biases when config.json does not say."""


@dataclass(frozen=True)
class ModelShape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied_embeddings: bool
    qkv_bias: bool = False
    dtype: str = "float32"
    """The checkpoint's own dtype (config.json's `torch_dtype`)."""
    max_positions: int = 2048

    @classmethod
    def from_hf_config(cls, config: dict[str, Any]) -> ModelShape:
        heads = config["num_attention_heads"]
        hidden = config["hidden_size"]
        return cls(
            hidden=hidden,
            layers=config["num_hidden_layers"],
            heads=heads,
            kv_heads=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or hidden // heads,
            intermediate=config["intermediate_size"],
            vocab=config["vocab_size"],
            # transformers' default when config.json is silent: tied
            tied_embeddings=config.get("tie_word_embeddings", True),
            qkv_bias=config.get("attention_bias", config.get("model_type") in _QKV_BIAS),
            dtype=str(config.get("torch_dtype") or config.get("dtype") or "float32"),
            max_positions=config.get("max_position_embeddings", 2048),
        )

    @property
    def layer_parameters(self) -> int:
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        attention = self.hidden * (q + 2 * kv) + q * self.hidden + (q + 2 * kv if self.qkv_bias else 0)
        return attention + 3 * self.hidden * self.intermediate + 2 * self.hidden

    @property
    def embedding_parameters(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2)

    @property
    def parameters(self) -> int:
        return self.layers * self.layer_parameters + self.embedding_parameters + self.hidden

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """K and V of every layer for one token."""
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes


def model_shape(config: ModelConfig) -> ModelShape:
    """Raises ModelNotFoundError, naming what to do, when no config.json is on this machine."""
    if isinstance(config, TinyModelConfig):
        return ModelShape(
            hidden=config.hidden_size,
            layers=config.num_layers,
            heads=config.num_heads,
            kv_heads=config.num_heads,
            head_dim=config.hidden_size // config.num_heads,
            intermediate=config.intermediate_size,
            vocab=ByteTokenizer().vocab_size,
            tied_embeddings=config.tie_embeddings,
            max_positions=config.max_positions,
        )
    return ModelShape.from_hf_config(json.loads(_config_json(config.name_or_path, config.revision).read_text()))


def _config_json(name_or_path: str, revision: str | None) -> Path:
    source = resolve_model(name_or_path)
    if source.kind == "directory":
        return Path(source.location) / "config.json"
    if source.kind == "gguf":
        stem = Path(source.location).stem
        converted = sorted((models_dir() / "converted").glob(f"{stem}-*/config.json"))
        if converted:
            return converted[-1]
        raise ModelNotFoundError(
            f"model {name_or_path!r}: {source.location} has no converted directory yet, so no config.json; "
            f"run `hillclimb model pull {name_or_path}` (or load it once) to write one"
        )
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(name_or_path, "config.json", revision=revision)
    if isinstance(cached, str):
        return Path(cached)
    raise ModelNotFoundError(
        f"model {name_or_path!r}: its config.json is not in the local Hugging Face cache (nothing is fetched "
        f"to plan): `huggingface-cli download {name_or_path} config.json`, or name a local directory"
    )
