"""Which model to run: a tiny randomly initialised one for CPU, or any Hugging Face causal LM.

Only pydantic here, so a run config validates without importing torch. `trainers.models.load`
turns these into a model and its tokenizer.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

__all__ = ["HFModelConfig", "ModelConfig", "TinyModelConfig"]


class TinyModelConfig(BaseModel):
    """A small Llama-architecture model with random weights and the byte tokenizer: no download."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["tiny"] = "tiny"
    hidden_size: int = Field(default=128, ge=8)
    """Width of the residual stream."""
    num_layers: int = Field(default=2, ge=1)
    num_heads: int = Field(default=4, ge=1)
    """Attention heads (as many key/value heads: no grouped-query attention at this size)."""
    intermediate_size: int = Field(default=512, ge=1)
    """Width of each MLP's hidden layer."""
    max_positions: int = Field(default=2048, ge=16)
    """Longest sequence (prompt + generation) the model accepts, in tokens."""
    tie_embeddings: bool = True
    """Share the input embedding matrix with the LM head."""
    seed: int = 0
    """Seeds the random initialisation: the same config always gives the same weights."""

    @model_validator(mode="after")
    def _heads_divide_width(self) -> TinyModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be a multiple of num_heads ({self.num_heads})")
        if (self.hidden_size // self.num_heads) % 2:
            head_size = self.hidden_size // self.num_heads
            raise ValueError(f"head size {head_size} must be even (rotary embeddings rotate pairs of dimensions)")
        return self


class HFModelConfig(BaseModel):
    """Any causal LM on the Hugging Face Hub or on disk, loaded with its own tokenizer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["hf"] = "hf"
    name_or_path: str = Field(min_length=1)
    """Hub id (`Qwen/Qwen2.5-0.5B-Instruct`) or a local directory written by `save_pretrained`."""
    revision: str | None = None
    """Hub branch, tag or commit; None means the default branch. Pin it for repeatable runs."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weight dtype; `auto` keeps the checkpoint's own."""
    trust_remote_code: bool = False
    """Run modelling code shipped with the checkpoint. Off unless you have read that code."""


def _model_type(value: object) -> str | None:
    """The union's tag; a mapping without `type` means the tiny model (so `--set policy.model.hidden_size=64` works)."""
    if isinstance(value, dict):
        return value.get("type", "tiny")
    return getattr(value, "type", None)


ModelConfig = Annotated[
    Annotated[TinyModelConfig, Tag("tiny")] | Annotated[HFModelConfig, Tag("hf")], Discriminator(_model_type)
]
