"""The packaged real model, SmolLM2-135M-Instruct, by name: what it loads as, that its GGUF
conversion keeps its function, and that the lean decode path computes what transformers does."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from hillclimb.config.models import HFModelConfig
from hillclimb.config.rollout import SamplingParams
from trainers.models.load import load_model
from trainers.models.resolve import resolve_model
from trainers.policy.base import GenerateRequest
from trainers.policy.hf import HFPolicy
from trainers.policy.lean_llama import unsupported_reason

NAME = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def smollm2():  # type: ignore[no-untyped-def]
    return load_model(HFModelConfig(name_or_path=NAME))


def test_the_name_loads_the_published_model_with_its_chat_template(smollm2) -> None:  # type: ignore[no-untyped-def]
    model, tokenizer = smollm2
    assert type(model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert (model.config.num_hidden_layers, model.config.hidden_size, model.config.num_key_value_heads) == (30, 576, 3)
    rendered = tokenizer.hf.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert rendered.startswith("<|im_start|>system\n") and "<|im_start|>user\nhi<|im_end|>" in rendered
    assert tokenizer.eos_token_id == tokenizer.hf.convert_tokens_to_ids("<|im_end|>")


@pytest.mark.slow
def test_the_converted_directory_computes_what_the_gguf_does(smollm2) -> None:  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM

    gguf = Path(resolve_model(NAME).location)
    direct = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name).eval()
    model, tokenizer = smollm2
    ids = torch.tensor([tokenizer.encode("The file notes.txt says:")])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, direct(ids).logits)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_the_lean_path_decodes_smollm2_as_transformers_does(smollm2, temperature: float) -> None:  # type: ignore[no-untyped-def]
    model, tokenizer = smollm2
    assert unsupported_reason(model) is None  # grouped-query attention, tied embeddings: all covered
    policy = functools.partial(HFPolicy, model, tokenizer, threads=1)
    lean, reference = policy(), policy(lean=False)
    prompts = ["Print the file notes.txt with", "ls -la shows"]
    requests = [GenerateRequest(prompt_ids=tuple(tokenizer.encode(p)), seed=i) for i, p in enumerate(prompts)]
    params = SamplingParams(max_new_tokens=6, temperature=temperature)
    for got, want in zip(lean.generate_sync(requests, params), reference.generate_sync(requests, params), strict=True):
        assert got.token_ids == want.token_ids
        torch.testing.assert_close(torch.tensor(got.logprobs), torch.tensor(want.logprobs), atol=1e-4, rtol=0)
