"""VLLMPolicy: a clear typed error where vLLM is missing; on a GPU machine with vLLM, a real check."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import pytest
import torch

from hillclimb.config.policy import VLLMPolicyConfig
from hillclimb.config.rollout import SamplingParams
from trainers.models import HFModelConfig, TinyModelConfig, build_tiny_model
from trainers.policy.base import GenerateRequest
from trainers.policy.errors import EngineNotInstalledError
from trainers.policy.factory import make_policy
from trainers.tokenizer import ByteTokenizer


def test_missing_vllm_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # what `import vllm` sees where it is not installed
    from trainers.policy.vllm import VLLMPolicy

    with pytest.raises(EngineNotInstalledError, match=r"pip install 'hillclimb\[vllm\]'") as info:
        VLLMPolicy("Qwen/Qwen2.5-0.5B-Instruct")
    assert isinstance(info.value, ImportError) and isinstance(info.value.__cause__, ImportError)
    assert str(pickle.loads(pickle.dumps(info.value))) == str(info.value)
    # The factory fails the same way, before loading any model or tokenizer.
    with pytest.raises(EngineNotInstalledError):
        make_policy(VLLMPolicyConfig(model=HFModelConfig(name_or_path="Qwen/Qwen2.5-0.5B-Instruct")))


def _save_tiny_with_byte_vocab(path: Path, seed: int) -> torch.nn.Module:
    """A tiny model plus a 259-token word-level tokenizer (one token per id) vLLM can load from disk."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    model = build_tiny_model(TinyModelConfig(seed=seed))
    model.save_pretrained(path)
    names = [f"b{i}" for i in range(256)] + ["<pad>", "<bos>", "<eos>"]
    raw = Tokenizer(models.WordLevel({name: i for i, name in enumerate(names)}, unk_token="<pad>"))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>")
    tokenizer.save_pretrained(path)
    return model.eval()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
async def test_vllm_logprobs_match_the_hf_model_and_weights_swap(tmp_path: Path) -> None:
    pytest.importorskip("vllm")
    from trainers.policy.vllm import VLLMPolicy

    reference = _save_tiny_with_byte_vocab(tmp_path, seed=0)
    policy = VLLMPolicy(
        str(tmp_path),
        tokenizer=ByteTokenizer(),
        dtype="float32",
        gpu_memory_utilization=0.2,
        enforce_eager=True,
        max_model_len=256,
    )
    prompt = tuple(ByteTokenizer().encode("cat app.log\n$ "))
    sampling = SamplingParams(max_new_tokens=8, temperature=0.7)

    async def check(model: torch.nn.Module, version: int) -> None:
        (generation,) = await policy.generate([GenerateRequest(prompt_ids=prompt, seed=3)], sampling)
        ids = torch.tensor([[*prompt, *generation.token_ids]])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1] / sampling.temperature
        expected = torch.log_softmax(logits, dim=-1).gather(1, ids[0, len(prompt) :, None]).squeeze(1)
        torch.testing.assert_close(torch.tensor(generation.logprobs), expected, atol=1e-3, rtol=0)
        assert generation.version == version

    await check(reference, 0)
    other = build_tiny_model(TinyModelConfig(seed=1)).eval()
    await policy.update_weights(1, other.state_dict())
    await check(other, 1)
