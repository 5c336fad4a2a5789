"""VLLMPolicy: a clear typed error where vLLM is missing; weight loads at vLLM's API (a stand-in for the
package here, `fake_vllm`); on a GPU machine with vLLM, a real check."""

from __future__ import annotations

import asyncio
import pickle
import sys
from pathlib import Path

import pytest
import torch

from hillclimb.config.policy import VLLMPolicyConfig
from hillclimb.config.rollout import SamplingParams
from tests.trainers import fake_vllm
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


@pytest.fixture
def fake_vllm_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", fake_vllm)


def _greedy(model: torch.nn.Module, prompt: tuple[int, ...], n: int) -> tuple[int, ...]:
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    return tuple(ids[len(prompt) :])


PROMPT = tuple(ByteTokenizer().encode("cat app.log\n$ "))
GREEDY = SamplingParams(max_new_tokens=4, temperature=0.0)


async def _generate(policy: object) -> tuple[int, ...]:
    (generation,) = await policy.generate([GenerateRequest(prompt_ids=PROMPT)], GREEDY)  # type: ignore[attr-defined]
    return generation.token_ids


@pytest.mark.usefixtures("fake_vllm_installed")
@pytest.mark.parametrize("in_buckets", [False, True], ids=["whole", "in-buckets"])
async def test_a_weight_load_drops_the_prefix_cache_of_the_old_weights(tmp_path: Path, in_buckets: bool) -> None:
    from trainers.policy.vllm import VLLMPolicy

    old = _save_tiny_with_byte_vocab(tmp_path, seed=0)
    new = build_tiny_model(TinyModelConfig(seed=1)).eval()
    with torch.no_grad():  # a random tiny model repeats the prompt's last byte; flipped, it will not
        new.model.norm.weight.neg_()
    assert _greedy(old, PROMPT, 1) != _greedy(new, PROMPT, 1)  # else the cache could not show
    policy = VLLMPolicy(str(tmp_path), tokenizer=ByteTokenizer())
    assert await _generate(policy) == _greedy(old, PROMPT, 4)  # and the prompt's result is now cached

    state = new.state_dict()
    if in_buckets:
        names = list(state)

        async def buckets():  # type: ignore[no-untyped-def]
            for part in (names[:3], names[3:]):
                yield {name: state[name].to(torch.bfloat16) for name in part}

        await policy.update_weights_in_buckets(1, buckets())
    else:
        await policy.update_weights(1, state)

    # Every bucket went into the model, then the cache was dropped: same prompt, the new weights' tokens.
    events = [e for e in policy._engine.events if e == "reset" or e[0] == "load"]
    assert [e if e == "reset" else e[0] for e in events] == ["load"] * (2 if in_buckets else 1) + ["reset"]
    assert {dtype for e in events[:-1] for dtype, _ in e[1].values()} == {
        torch.bfloat16 if in_buckets else torch.float32
    }
    assert policy.version == 1
    expected = _greedy(new.to(torch.bfloat16).float(), PROMPT, 4) if in_buckets else _greedy(new, PROMPT, 4)
    assert await _generate(policy) == expected
    assert policy.dtype == torch.float32  # what vLLM runs (here: the stand-in's float32), which a publish casts to


@pytest.mark.usefixtures("fake_vllm_installed")
def test_the_engine_gets_its_tensor_parallel_size_and_memory_share(tmp_path: Path) -> None:
    _save_tiny_with_byte_vocab(tmp_path, seed=0)
    config = VLLMPolicyConfig(
        model=HFModelConfig(name_or_path=str(tmp_path)), gpus=2, tensor_parallel=2, gpu_memory_utilization=0.8
    )
    args = make_policy(config)._engine.args  # type: ignore[attr-defined]
    assert args.tensor_parallel_size == 2 and args.gpu_memory_utilization == 0.8
    assert args.max_num_seqs == config.max_batch and args.logprobs_mode == "processed_logprobs"


def test_tensor_parallel_engines_reserve_a_gpu_per_shard() -> None:
    model = HFModelConfig(name_or_path="Qwen/Qwen2.5-0.5B-Instruct")
    with pytest.raises(ValueError, match=r"set policy.gpus=4 \(it is 1\)"):
        VLLMPolicyConfig(model=model, gpus=1, tensor_parallel=4)


def _starts_and_finishes(engine: fake_vllm.AsyncLLMEngine) -> dict[str, tuple[int, int]]:
    steps: dict[str, list[int]] = {}
    for event in engine.events:
        if event != "reset" and event[0] in ("start", "finish"):
            steps.setdefault(event[1], []).append(event[2])
    return {request_id: (start, finish) for request_id, (start, finish) in steps.items()}


async def _until_decoding(policy: object) -> None:
    """Until vLLM has given the request in flight a few tokens."""
    engine = policy._engine  # type: ignore[attr-defined]
    while engine.step < 3 or not engine.running:
        await asyncio.sleep(0.001)


@pytest.mark.usefixtures("fake_vllm_installed")
async def test_a_request_arriving_mid_decode_starts_at_once_and_returns_first(tmp_path: Path) -> None:
    from trainers.policy.vllm import VLLMPolicy

    model = _save_tiny_with_byte_vocab(tmp_path, seed=0)
    policy = VLLMPolicy(str(tmp_path), tokenizer=ByteTokenizer())
    long = asyncio.create_task(
        policy.generate([GenerateRequest(prompt_ids=PROMPT)], SamplingParams(max_new_tokens=40, temperature=0.0))
    )
    await _until_decoding(policy)
    (short,) = await policy.generate(
        [GenerateRequest(prompt_ids=PROMPT[:5])], SamplingParams(max_new_tokens=2, temperature=0.0)
    )
    assert not long.done()  # the short request came back while the long one still decodes
    ((long_generation,),) = [await long]
    (long_start, long_finish), (short_start, short_finish) = _starts_and_finishes(policy._engine).values()
    # It joined the running batch a step after it arrived (static batching would start it after step 40).
    assert long_start < short_start <= long_start + 10 and short_finish == short_start + 1 < long_finish
    assert short.token_ids == _greedy(model, PROMPT[:5], 2) and long_generation.token_ids == _greedy(model, PROMPT, 40)


@pytest.mark.usefixtures("fake_vllm_installed")
async def test_a_weight_load_waits_for_requests_in_flight_and_holds_new_ones(tmp_path: Path) -> None:
    from trainers.policy.vllm import VLLMPolicy

    old = _save_tiny_with_byte_vocab(tmp_path, seed=0)
    new = build_tiny_model(TinyModelConfig(seed=1)).eval()
    with torch.no_grad():
        new.model.norm.weight.neg_()
    policy = VLLMPolicy(str(tmp_path), tokenizer=ByteTokenizer())
    sampling = SamplingParams(max_new_tokens=30, temperature=0.0)
    before = asyncio.create_task(policy.generate([GenerateRequest(prompt_ids=PROMPT)], sampling))
    await _until_decoding(policy)
    load = asyncio.create_task(policy.update_weights(1, new.state_dict()))
    await asyncio.sleep(0.01)
    after = asyncio.create_task(policy.generate([GenerateRequest(prompt_ids=PROMPT)], GREEDY))
    await asyncio.sleep(0.01)
    assert not load.done() and policy.version == 0  # the in-flight request still decodes under version 0
    ((old_generation,), _, (new_generation,)) = await asyncio.gather(before, load, after)

    events = [e if e == "reset" else e[0] if e[0] == "load" else e[:2] for e in policy._engine.events]
    first, second = (e[1] for e in events if e[0] == "start")
    assert events == [("start", first), ("finish", first), "load", "reset", ("start", second), ("finish", second)]
    assert [e[2] for e in policy._engine.events if e[0] == "load"] == [0]  # nothing running during the load
    assert (old_generation.version, old_generation.token_ids) == (0, _greedy(old, PROMPT, 30))
    # The same prompt after the load: computed under the new weights, not read from the old prefix cache.
    assert (new_generation.version, new_generation.token_ids) == (1, _greedy(new, PROMPT, 4))


@pytest.mark.usefixtures("fake_vllm_installed")
async def test_each_request_gets_its_own_tokens_and_logprobs_in_order(tmp_path: Path) -> None:
    from trainers.policy.vllm import VLLMPolicy

    model = _save_tiny_with_byte_vocab(tmp_path, seed=0)
    policy = VLLMPolicy(str(tmp_path), tokenizer=ByteTokenizer())
    prompts = [PROMPT, PROMPT[:4], PROMPT[3:]]
    lengths = [6, 2, 4]
    requests = [GenerateRequest(prompt_ids=p) for p in prompts]
    generations = await asyncio.gather(
        *(
            policy.generate([r], SamplingParams(max_new_tokens=n, temperature=0.0))
            for r, n in zip(requests, lengths, strict=True)
        )
    )
    together = await policy.generate(requests[::-1], SamplingParams(max_new_tokens=3, temperature=0.0))
    for (generation,), prompt, n in zip(generations, prompts, lengths, strict=True):
        ids = torch.tensor([[*prompt, *generation.token_ids]])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1]
        expected = torch.log_softmax(logits, dim=-1).gather(1, ids[0, len(prompt) :, None]).squeeze(1)
        assert generation.token_ids == _greedy(model, prompt, n) and generation.finish_reason == "length"
        torch.testing.assert_close(torch.tensor(generation.logprobs), expected, atol=1e-5, rtol=0)
    assert [g.token_ids for g in together] == [_greedy(model, p, 3) for p in prompts[::-1]]
    ids = [e[1] for e in policy._engine.events if e[0] == "start"]
    assert len(ids) == len(set(ids)) == 6  # one vLLM request id each


@pytest.mark.usefixtures("fake_vllm_installed")
def test_the_stand_in_refuses_what_vllm_refuses(tmp_path: Path) -> None:
    """The stand-in is only as good as its strictness: an argument vLLM does not take fails here too."""
    with pytest.raises(TypeError):
        fake_vllm.AsyncEngineArgs(model=str(tmp_path), max_batch=4)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        fake_vllm.SamplingParams(max_new_tokens=4)  # type: ignore[call-arg]
