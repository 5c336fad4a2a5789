"""The tiny CPU model: transformers' own Llama architecture, built from a config, random weights.

Using the stock architecture (not a hand-written transformer) means the tiny model runs
through exactly the code paths a real checkpoint does — the KV cache, attention masks,
rotary position ids, `save_pretrained` / `from_pretrained` — so what the tests prove about
the policy engines and learners holds for real models too. Its vocabulary is the byte
tokenizer's 259 ids, so it needs no download.
"""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hillclimb.config.models import TinyModelConfig
from trainers.tokenizer import ByteTokenizer

__all__ = ["build_tiny_model", "tiny_llama_config"]


def tiny_llama_config(config: TinyModelConfig) -> LlamaConfig:
    tokenizer = ByteTokenizer()
    return LlamaConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads,
        max_position_embeddings=config.max_positions,
        tie_word_embeddings=config.tie_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def build_tiny_model(config: TinyModelConfig) -> LlamaForCausalLM:
    """A freshly initialised tiny model on the CPU, identical for identical configs.

    The weights are drawn on the CPU from a generator seeded by `config.seed`, inside a forked
    RNG so the caller's global torch random state is left as it was.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = LlamaForCausalLM(tiny_llama_config(config))
    return model
