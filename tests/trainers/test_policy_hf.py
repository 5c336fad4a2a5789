"""HFPolicy on real tiny transformers models: batch-invariance, exact log-probs, stops, batching, weight swaps."""

from __future__ import annotations

import asyncio
import functools
import pickle
import time

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedModel

from hillclimb.config.rollout import SamplingParams
from hillclimb.errors import HillclimbError
from trainers.models import TinyModelConfig, build_tiny_model
from trainers.policy.base import EpisodeInfo, GenerateRequest, Policy
from trainers.policy.errors import ContextOverflowError, PolicyRequestError
from trainers.policy.hf import HFPolicy
from trainers.tokenizer import ByteTokenizer

TOKENIZER = ByteTokenizer()
TINY = TinyModelConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, max_positions=256)
TEXTS = ["$ ", "cat app.log\n", "You are in a read-only shell with a few files.\nQuestion: which port?\n$ ", "l"]
# Every 23rd byte stops a row (~4% a step): sampled rows end by stop or by length.
STOPS = tuple(range(3, 256, 23))
SAMPLINGS = {
    "greedy": SamplingParams(max_new_tokens=24, temperature=0.0, stop_token_ids=STOPS),
    "t1": SamplingParams(max_new_tokens=24, temperature=1.0, stop_token_ids=STOPS),
    "t07-p08": SamplingParams(max_new_tokens=24, temperature=0.7, top_p=0.8, stop_token_ids=STOPS),
}


def _gpt2() -> GPT2LMHeadModel:
    # Absolute position embeddings: a left-padded row with wrong position ids would read different
    # embeddings, so batch-invariance on GPT-2 checks the position ids (rotary Llama would hide it).
    config = GPT2Config(
        vocab_size=259,
        n_positions=256,
        n_embd=64,
        n_layer=2,
        n_head=4,
        bos_token_id=257,
        eos_token_id=258,
        pad_token_id=256,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return GPT2LMHeadModel(config).eval()


# One intra-op thread, as HFPolicyConfig defaults to: steady timings on a shared, busy CPU.
_hf = functools.partial(HFPolicy, threads=1)

MODELS = {"llama": lambda: build_tiny_model(TINY), "gpt2": _gpt2}


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request: pytest.FixtureRequest) -> PreTrainedModel:
    return MODELS[request.param]().eval()


@pytest.fixture(scope="module")
def llama() -> PreTrainedModel:
    return build_tiny_model(TINY).eval()


def _requests(seed0: int = 100) -> list[GenerateRequest]:
    return [GenerateRequest(prompt_ids=tuple(TOKENIZER.encode(t)), seed=seed0 + i) for i, t in enumerate(TEXTS)]


def _assert_same(got: list, want: list) -> None:
    for g, w in zip(got, want, strict=True):
        assert (g.token_ids, g.finish_reason, g.version) == (w.token_ids, w.finish_reason, w.version)
        torch.testing.assert_close(torch.tensor(g.logprobs), torch.tensor(w.logprobs), atol=1e-5, rtol=0)


BATCHING = pytest.mark.parametrize("batching", ["continuous", "static"])


@BATCHING
@pytest.mark.parametrize("sampling", sorted(SAMPLINGS))
async def test_batched_equals_unbatched_for_the_same_seeds(
    model: PreTrainedModel, sampling: str, batching: str
) -> None:
    policy = _hf(model, TOKENIZER, max_batch=8, max_wait_s=0.01, batching=batching)
    # Different lengths per request, so rows leave the batch (and its KV cache) at different steps.
    base = SAMPLINGS[sampling]
    calls = [(r, base.model_copy(update={"max_new_tokens": 6 + 6 * i})) for i, r in enumerate(_requests())]
    alone = [policy.generate_sync([r], p)[0] for r, p in calls]
    together = await asyncio.gather(*(policy.generate([r], p) for r, p in calls))
    reordered = await asyncio.gather(*(policy.generate([r], p) for r, p in reversed(calls)))
    if policy.batching == "static":
        assert policy.batch_sizes[len(calls)] == 2  # each round ran as one batch
    else:  # each request joined a running batch once a round (alone, together, reordered)
        assert sum(size * n for size, n in policy.batch_sizes.items()) == 3 * len(calls)
    _assert_same([g for (g,) in together], alone)
    _assert_same([g for (g,) in reversed(reordered)], alone)


@pytest.mark.parametrize(("temperature", "top_p"), [(0.7, 0.9), (1.3, 1.0), (0.0, 1.0)])
def test_logprobs_match_a_full_forward_pass(model: PreTrainedModel, temperature: float, top_p: float) -> None:
    policy = _hf(model, TOKENIZER)
    params = SamplingParams(max_new_tokens=20, temperature=temperature, top_p=top_p)
    requests = _requests()
    for request, generation in zip(requests, policy.generate_sync(requests, params), strict=True):
        prompt, sampled = list(request.prompt_ids), list(generation.token_ids)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + sampled])).logits[0, len(prompt) - 1 : -1].float()
        logprobs = torch.log_softmax(logits / (temperature or 1.0), dim=-1)  # greedy reports T = 1
        expected = logprobs.gather(1, torch.tensor(sampled)[:, None]).squeeze(1)
        torch.testing.assert_close(torch.tensor(generation.logprobs), expected, atol=1e-5, rtol=0)
        if temperature == 0:
            assert sampled == logits.argmax(dim=-1).tolist()


class EOSAt(ByteTokenizer):
    """The byte tokenizer with a chosen EOS id, to make a random model emit EOS on cue."""

    def __init__(self, eos: int) -> None:
        super().__init__()
        self._eos = eos

    @property
    def eos_token_id(self) -> int:
        return self._eos


def test_stop_tokens_end_generation_inclusively_and_length_caps_it(llama: PreTrainedModel) -> None:
    policy = _hf(llama, TOKENIZER)
    request = _requests()[2]
    free = policy.generate_sync([request], SamplingParams(max_new_tokens=30, temperature=0.0))[0]
    assert free.finish_reason == "length" and len(free.token_ids) == 30
    stop = free.token_ids[6]
    cut = free.token_ids.index(stop) + 1  # the first occurrence ends it, stop token included

    until_stop = SamplingParams(max_new_tokens=30, temperature=0.0, stop_token_ids=(stop,))
    stopped = policy.generate_sync([request], until_stop)[0]
    assert (stopped.token_ids, stopped.logprobs, stopped.finish_reason) == (
        free.token_ids[:cut],
        free.logprobs[:cut],
        "stop",
    )
    capped = policy.generate_sync([request], SamplingParams(max_new_tokens=5, temperature=0.0))[0]
    assert (capped.token_ids, capped.finish_reason) == (free.token_ids[:5], "length")
    # A stop token on the last allowed step is still a stop.
    at_limit = policy.generate_sync([request], until_stop.model_copy(update={"max_new_tokens": cut}))
    assert at_limit[0].finish_reason == "stop"
    # EOS ends a generation even when the caller did not list it (as vLLM does).
    eos_policy = _hf(llama, EOSAt(stop))
    assert eos_policy.generate_sync([request], SamplingParams(max_new_tokens=30, temperature=0.0))[0] == stopped


def test_seeds_repeat_and_unseeded_requests_vary(llama: PreTrainedModel) -> None:
    policy = _hf(llama, TOKENIZER)
    params = SamplingParams(max_new_tokens=16, temperature=1.0)
    prompt = tuple(TOKENIZER.encode("cat notes.txt\n"))

    def run(seed: int | None) -> tuple[int, ...]:
        return policy.generate_sync([GenerateRequest(prompt_ids=prompt, seed=seed)], params)[0].token_ids

    assert run(7) == run(7)
    assert run(7) != run(8)
    assert run(None) != run(None)


@BATCHING
async def test_concurrent_episodes_are_batched_and_the_loop_stays_responsive(
    llama: PreTrainedModel, batching: str
) -> None:
    policy = _hf(llama, TOKENIZER, max_batch=32, max_wait_s=0.005, batching=batching)
    assert isinstance(policy, Policy)
    mixed = [SAMPLINGS["greedy"].model_copy(update={"max_new_tokens": 64}), SamplingParams(max_new_tokens=64)]
    requests = [GenerateRequest(prompt_ids=tuple(TOKENIZER.encode(f"ls {i}\n")), seed=i) for i in range(24)]
    calls = [(request, mixed[i % 2]) for i, request in enumerate(requests)]
    expected = [policy.generate_sync([r], s)[0] for r, s in calls]
    policy.batch_sizes.clear()

    lags: list[float] = []
    in_flight_ticks = 0  # ticks made while a batch was generating: none if generation held the loop
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal in_flight_ticks
        while not done.is_set():
            start = time.perf_counter()
            await asyncio.sleep(0.002)
            lags.append(time.perf_counter() - start - 0.002)
            in_flight_ticks += bool(policy._batcher.running)

    ticking = asyncio.create_task(ticker())
    start = time.perf_counter()
    results = await asyncio.gather(*(policy.generate([r], s) for r, s in calls))
    elapsed = time.perf_counter() - start
    done.set()
    await ticking

    _assert_same([g for (g,) in results], expected)  # greedy and sampled rows shared batches
    assert sum(size * n for size, n in policy.batch_sizes.items()) == 24
    assert max(policy.batch_sizes) > 1
    # Generation ran off the loop: the loop kept ticking all along, batches in flight included.
    # Counted rather than timed, so a loaded host's stalls do not fail it; the lag bound only catches a hang.
    assert in_flight_ticks >= 5 and len(lags) > elapsed / 0.05, (in_flight_ticks, elapsed, len(lags))
    assert max(lags) < 2.0, max(lags)


@BATCHING
async def test_update_weights_swaps_between_batches_and_stamps_the_version(
    llama: PreTrainedModel, batching: str
) -> None:
    other = build_tiny_model(TINY.model_copy(update={"seed": 1}))
    params = SamplingParams(max_new_tokens=12, temperature=1.0)
    requests = _requests()
    before = _hf(llama, TOKENIZER).generate_sync(requests, params)
    after = [g.model_copy(update={"version": 3}) for g in _hf(other, TOKENIZER).generate_sync(requests, params)]
    assert [g.token_ids for g in before] != [g.token_ids for g in after]

    policy = _hf(build_tiny_model(TINY), TOKENIZER, max_batch=2, max_wait_s=0.0, batching=batching)
    in_flight = [asyncio.create_task(policy.generate([r], params)) for r in requests * 3]
    await asyncio.sleep(0.01)  # the first batch is running
    await policy.update_weights(3, other.state_dict())
    assert policy.version == 3
    results = [g for (g,) in await asyncio.gather(*in_flight)]

    versions = [g.version for g in results]
    assert versions[0] == 0 and versions[-1] == 3 and versions == sorted(versions)
    for i, generation in enumerate(results):  # each batch ran entirely on one version's weights
        _assert_same([generation], [(before if generation.version == 0 else after)[i % len(requests)]])


def test_prompts_past_the_context_or_the_vocabulary_are_refused(llama: PreTrainedModel) -> None:
    policy = _hf(llama, TOKENIZER, max_context=64)
    params = SamplingParams(max_new_tokens=16)
    policy.generate_sync([GenerateRequest(prompt_ids=(65,) * 48, seed=0)], params)  # 48 + 16 = 64 fits

    with pytest.raises(ContextOverflowError, match="49 tokens \\+ max_new_tokens 16 exceeds .* 64") as info:
        policy.generate_sync([GenerateRequest(prompt_ids=(65,) * 49)], params)
    error = info.value
    assert isinstance(error, ValueError) and isinstance(error, HillclimbError)
    assert (error.prompt_tokens, error.max_new_tokens, error.max_context) == (49, 16, 64)
    copy = pickle.loads(pickle.dumps(error))  # Ray ships errors across processes
    assert (type(copy), str(copy), copy.max_context) == (ContextOverflowError, str(error), 64)

    assert _hf(llama, TOKENIZER).max_context == TINY.max_positions
    with pytest.raises(PolicyRequestError, match="259 is outside the model's vocabulary"):
        policy.generate_sync([GenerateRequest(prompt_ids=(65, 259))], params)
    with pytest.raises(PolicyRequestError, match="empty"):
        policy.generate_sync([GenerateRequest(prompt_ids=())], params)


async def test_threads_apply_to_the_policy_worker_only(llama: PreTrainedModel) -> None:
    before = torch.get_num_threads()
    policy = HFPolicy(llama, TOKENIZER, threads=1)
    await policy.generate(_requests()[:1], SamplingParams(max_new_tokens=2))
    assert await policy._batcher.call(torch.get_num_threads) == 1
    assert torch.get_num_threads() == before


def _llama_gqa() -> PreTrainedModel:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=259,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention: two query heads share each key/value head
        max_position_embeddings=256,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0},
        pad_token_id=256,
        bos_token_id=257,
        eos_token_id=258,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("build", [lambda: build_tiny_model(TINY), _llama_gqa], ids=["tiny", "gqa"])
@pytest.mark.parametrize("sampling", sorted(SAMPLINGS))
def test_the_lean_llama_path_decodes_what_transformers_does(build, sampling: str) -> None:  # type: ignore[no-untyped-def]
    model = build()
    lean, reference = _hf(model, TOKENIZER), _hf(model, TOKENIZER, lean=False)
    assert lean._lean and not reference._lean
    # Ragged prompts and lengths: left padding, and rows leaving the batch (and the cache) early.
    base = SAMPLINGS[sampling]
    calls = [(r, base.model_copy(update={"max_new_tokens": 6 + 6 * i})) for i, r in enumerate(_requests())]
    for request, params in calls:
        _assert_same(lean.generate_sync([request], params), reference.generate_sync([request], params))
    requests = _requests(seed0=7)
    _assert_same(lean.generate_sync(requests, base), reference.generate_sync(requests, base))


def test_models_the_lean_path_does_not_know_take_transformers_path() -> None:
    assert not _hf(_gpt2(), TOKENIZER)._lean


def _episode_turns(policy: HFPolicy, params: SamplingParams, observations: list[str]) -> list[list]:
    """Four episodes played turn by turn, each turn's prompt its last prompt + generation +
    an observation: the shape of a rollout's transcripts."""
    prompts = [tuple(TOKENIZER.encode(t)) for t in TEXTS]
    turns = []
    for turn, observation in enumerate(observations):
        requests = [
            GenerateRequest(prompt_ids=p, seed=10 * i + turn, episode=EpisodeInfo("toy", f"t{i}", turn, seed=i))
            for i, p in enumerate(prompts)
        ]
        generations = policy.generate_sync(requests, params)
        turns.append(generations)
        reply = tuple(TOKENIZER.encode(observation))
        prompts = [p + g.token_ids + reply for p, g in zip(prompts, generations, strict=True)]
    return turns


@pytest.mark.parametrize("sampling", sorted(SAMPLINGS))
def test_an_episodes_next_turn_reuses_its_cache_and_decodes_the_same(llama: PreTrainedModel, sampling: str) -> None:
    observations = ["\nnotes.txt app.log\n$ ", "\nport 8080\n$ ", "\nok\n$ "]
    cached, fresh = _hf(llama, TOKENIZER), _hf(llama, TOKENIZER, lean=False)
    for with_cache, without in zip(
        _episode_turns(cached, SAMPLINGS[sampling], observations),
        _episode_turns(fresh, SAMPLINGS[sampling], observations),
        strict=True,
    ):
        _assert_same(with_cache, without)
    # Every episode's second and third turns found their cache: only the new tokens were prefilled.
    assert cached._prefixes.hits == 4 * (len(observations) - 1)


@pytest.mark.parametrize("in_buckets", [False, True], ids=["whole", "in-buckets"])
def test_a_cache_is_used_only_for_its_own_tokens_and_weights(llama: PreTrainedModel, in_buckets: bool) -> None:
    policy = _hf(llama, TOKENIZER)
    params = SAMPLINGS["greedy"]
    episode = EpisodeInfo("toy", "t", 0, seed=1)
    first = policy.generate_sync([GenerateRequest(prompt_ids=(70, 71, 72), episode=episode)], params)[0]
    edited = (70, 99, 72, *first.token_ids, 65)  # the same episode key, another history
    policy.generate_sync([GenerateRequest(prompt_ids=edited, episode=episode)], params)
    assert policy._prefixes.hits == 0
    again = policy.generate_sync([GenerateRequest(prompt_ids=edited, episode=episode)], params)[0]
    continued = (*edited, *again.token_ids)
    state = build_tiny_model(TINY.model_copy(update={"seed": 2})).state_dict()
    if in_buckets:  # as a publish sends them: one bucket after another, the engine loading each as it comes
        names = list(state)

        async def buckets():  # type: ignore[no-untyped-def]
            for part in (names[:4], names[4:9], names[9:]):
                yield {name: state[name] for name in part}

        asyncio.run(policy.update_weights_in_buckets(1, buckets()))
    else:
        asyncio.run(policy.update_weights(1, state))
    assert len(policy._prefixes) == 0  # keys and values of the old weights are gone with them
    reference = _hf(build_tiny_model(TINY.model_copy(update={"seed": 2})), TOKENIZER, lean=False)
    request = GenerateRequest(prompt_ids=(*continued, 66), episode=episode)
    expected = [g.model_copy(update={"version": 1}) for g in reference.generate_sync([request], params)]
    _assert_same(policy.generate_sync([request], params), expected)
