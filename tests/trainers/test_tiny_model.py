"""The tiny model is built from its config, seeded, and the Hugging Face path loads a saved model by path."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from transformers import LlamaForCausalLM
from word_tokenizer import word_tokenizer

from trainers.models import HFModelConfig, TinyModelConfig, build_tiny_model, load_model, load_model_tokenizer
from trainers.tokenizer import ByteTokenizer, HFTokenizer

SMALL = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, max_positions=128)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_architecture_follows_the_config() -> None:
    config = TinyModelConfig(hidden_size=64, num_layers=3, num_heads=4, intermediate_size=96, max_positions=512)
    model = build_tiny_model(config)
    assert isinstance(model, LlamaForCausalLM)
    assert model.get_input_embeddings().weight.shape == (ByteTokenizer().vocab_size, 64) == (259, 64)
    assert len(model.model.layers) == 3
    assert model.model.layers[0].mlp.up_proj.weight.shape == (96, 64)
    assert model.config.num_attention_heads == 4 and model.config.max_position_embeddings == 512
    tokenizer = ByteTokenizer()
    assert (model.config.pad_token_id, model.config.eos_token_id) == (tokenizer.pad_token_id, tokenizer.eos_token_id)


def test_tied_embeddings_share_one_matrix() -> None:
    tied = build_tiny_model(SMALL)
    untied = build_tiny_model(SMALL.model_copy(update={"tie_embeddings": False}))
    assert tied.lm_head.weight is tied.get_input_embeddings().weight
    assert untied.lm_head.weight is not untied.get_input_embeddings().weight
    assert sum(p.numel() for p in untied.parameters()) - sum(p.numel() for p in tied.parameters()) == 259 * 32


def test_init_is_seeded_and_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = build_tiny_model(SMALL)
    assert torch.equal(torch.rand(3), expected_next)  # building a model drew nothing from the global RNG
    assert _same_weights(a, build_tiny_model(SMALL))
    assert not _same_weights(a, build_tiny_model(SMALL.model_copy(update={"seed": 1})))


def test_random_init_predicts_close_to_uniform() -> None:
    # Small init (std 0.02) gives near-zero logits: cross-entropy ≈ ln(259) = 5.5568 nats per token.
    model = build_tiny_model(SMALL)
    ids = torch.tensor([ByteTokenizer().encode("cat app.log\nERROR payment gateway timeout\n")])
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss
    assert abs(loss.item() - math.log(259)) < 0.05


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"hidden_size": 30, "num_heads": 4}, "multiple of num_heads"),
        ({"hidden_size": 36, "num_heads": 4}, "must be even"),
        ({"layers": 2}, "Extra inputs are not permitted"),
        ({"num_layers": 0}, "greater than or equal to 1"),
    ],
)
def test_bad_configs_are_rejected(fields: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        TinyModelConfig(**fields)


def test_load_model_tiny_gives_the_byte_tokenizer() -> None:
    model, tokenizer = load_model(SMALL, "cpu")
    assert isinstance(tokenizer, ByteTokenizer) and isinstance(load_model_tokenizer(SMALL), ByteTokenizer)
    assert not model.training
    assert _same_weights(model, build_tiny_model(SMALL))


def test_hf_path_loads_a_saved_model_and_tokenizer_by_path(tmp_path: Path) -> None:
    saved = build_tiny_model(SMALL)
    saved.save_pretrained(tmp_path)
    word_tokenizer().save_pretrained(tmp_path)

    model, tokenizer = load_model(HFModelConfig(name_or_path=str(tmp_path)), "cpu")

    assert isinstance(model, LlamaForCausalLM) and not model.training
    assert _same_weights(model, saved)
    ids = torch.tensor([[3, 5, 7, 8, 9, 10]])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, saved(input_ids=ids).logits, rtol=0, atol=0)
    assert isinstance(tokenizer, HFTokenizer)
    assert tokenizer.encode("cat app.log") == [7, 8, 9, 10]
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.vocab_size) == (1, 0, 13)
    chat = tokenizer.hf.apply_chat_template([{"role": "user", "content": "ls"}], tokenize=False)
    assert chat == "user : ls <eos> "


def test_hf_path_honours_dtype(tmp_path: Path) -> None:
    build_tiny_model(SMALL).save_pretrained(tmp_path)
    word_tokenizer().save_pretrained(tmp_path)
    model, _ = load_model(HFModelConfig(name_or_path=str(tmp_path), dtype="bfloat16"), "cpu")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_public_api_is_pinned() -> None:
    import trainers.models as package

    assert package.__all__ == [
        "HFModelConfig",
        "ModelConfig",
        "TinyModelConfig",
        "build_tiny_model",
        "load_model",
        "load_model_tokenizer",
    ]
    assert all(getattr(package, name) is not None for name in package.__all__)
