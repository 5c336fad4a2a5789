"""GPU lane: learner-step and vLLM-generation throughput of a Qwen2-0.5B-shaped model, random weights.

    Qwen2Config (size) ─► random init (seeded) ─► save_pretrained + word-level tokenizer ─► model dir
        model dir ─► Learner (in-process, world size 1, HFModelConfig) ─► train_step × (warm-up + reps)
        model dir ─► VLLMPolicy (vLLM's LLM, bf16) ─► generate × reps          (CUDA and vLLM only)

Nothing is downloaded: the model is Qwen2-0.5B's shape (24 layers, hidden 896, 14 query / 2 key-
value heads, MLP 4864, vocabulary 151,936, tied head; ~494 M parameters) built from its config,
and the tokenizer a word-level one with one token per id, which both the learner and vLLM load
from the directory. The weights are random, so what is measured is speed, not text.

Learner: optimizer steps of `trainers.learner.Learner` on the path a GPU run takes: the model
dir's bf16 weights loaded as fp32 master weights, bf16 compute (`precision: bf16`, autocast, on
CPU too), checkpointed decoder blocks, GRPO + ECHO loss, AdamW; over a batch of agent-shaped
sequences (10 % prompt, then turns of 30 ACTION / 10 SCAFFOLD / 160 ENV tokens, as
`bench.echo_loss` lays them out). tokens/s is *trained* tokens (ACTION and ENV targets, as the
learner's own metrics count them) per second, median over the timed steps after the warm-up.
MFU counts every token the model runs over (prompt and scaffold too) at

    FLOPs per token = 6 · N + 12 · L · d · T

(PaLM's appendix B, torchtitan's count): 6 · N for the matrix products of forward (2) and
backward (4), N the parameters in them (the LM head's included, the input embedding's lookup
not: with a tied head N is the parameter count), and 12 · L · d · T for attention's scores and
weighted sum (QKᵀ and AV: 2 · 2 · T · d per token per layer forward, three times that with the
backward), L layers, d = heads · head size, T the sequence length, the causal mask's skipped
half counted as done. The recompute of checkpointed blocks is not counted (model FLOPs, not
hardware FLOPs). MFU = FLOPs per token · sequence tokens/s / peak, the peak being the GPU's
bf16 dense tensor-core figure (`bench.echo_loss.PEAK_BF16_TFLOPS`, keyed by the name torch
reports) or `--peak-tflops`; MFU is left out when neither is known.

Generation: `trainers.policy.vllm.VLLMPolicy` (the rollout path: per-request seeds, sampled
log-probs) on random prompts, temperature 1; tokens/s is generated tokens per second of wall
time, median over reps after one warm-up batch. Skipped, with the reason, without CUDA or vLLM.

`--toy` (the default without CUDA) runs the same code at toy size (2 layers, hidden 128,
vocabulary 512, a few short steps) so its logic is exercised on CPU; it measures nothing about
GPUs and writes no result file unless `--out` is given. A full run writes
`bench/results/learner_gpu.json`. On one H100-class GPU a full run should take about 3 minutes
(estimated, not yet run: random init and save ~30 s, learner ~30 s, vLLM start-up ~1-2 min,
generation ~30 s).

    python -m bench.learner_gpu [--toy] [--device cpu|cuda] [--peak-tflops T] [--out PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import print_table, summarize, write_result
from bench.echo_loss import PEAK_BF16_TFLOPS, device_facts, roles_for

NAME = "learner_gpu"
SPECIALS = ("<pad>", "<bos>", "<eos>")
"""The tokenizer's last three ids."""


@dataclasses.dataclass(frozen=True)
class Size:
    """A model shape and the work measured on it."""

    model: dict[str, int]
    """Qwen2Config fields."""
    batch: int
    seq_len: int
    micro_batch_tokens: int
    warmup_steps: int
    steps: int
    prompts: int
    prompt_len: int
    new_tokens: int
    generation_reps: int


QWEN2_0_5B = {
    "vocab_size": 151_936,
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
}
SIZES = {
    "full": Size(
        model=QWEN2_0_5B,
        batch=16,
        seq_len=2048,
        micro_batch_tokens=8192,
        warmup_steps=3,
        steps=10,
        prompts=256,
        prompt_len=512,
        new_tokens=512,
        generation_reps=3,
    ),
    "toy": Size(
        model=QWEN2_0_5B
        | {"vocab_size": 512, "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2}
        | {"num_attention_heads": 4, "num_key_value_heads": 2},  # head size 32, as attention kernels like
        batch=4,
        seq_len=64,
        micro_batch_tokens=128,
        warmup_steps=1,
        steps=2,
        prompts=8,
        prompt_len=16,
        new_tokens=16,
        generation_reps=2,
    ),
}


def qwen2_config(size: Size) -> Any:
    """Qwen2's architecture at `size`, the special tokens at the vocabulary's end."""
    from transformers import Qwen2Config

    vocab = size.model["vocab_size"]
    pad, bos, eos = range(vocab - len(SPECIALS), vocab)
    return Qwen2Config(
        **size.model,
        max_position_embeddings=32_768,
        rope_theta=1e6,
        tie_word_embeddings=True,
        pad_token_id=pad,
        bos_token_id=bos,
        eos_token_id=eos,
    )


def write_model_dir(path: Path, size: Size, seed: int = 0) -> int:
    """A random-init model (bf16 on disk) and its word-level tokenizer in `path`; its parameter count."""
    import torch
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast, Qwen2ForCausalLM

    config = qwen2_config(size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())  # the tied head once
    model.to(torch.bfloat16).save_pretrained(path)
    pad, bos, eos = SPECIALS
    names = [f"t{i}" for i in range(config.vocab_size - len(SPECIALS))] + list(SPECIALS)
    raw = Tokenizer(models.WordLevel({name: i for i, name in enumerate(names)}, unk_token=pad))
    # An unknown token of its own, or a loader picking Qwen2's tokenizer class adds one past the vocabulary.
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, pad_token=pad, bos_token=bos, eos_token=eos, unk_token=pad
    )
    tokenizer.save_pretrained(path)
    return n_params


def agent_samples(size: Size, seed: int = 0) -> list[Any]:
    """`size.batch` sequences of `size.seq_len` random ordinary tokens with agent-shaped roles."""
    import random

    from trainers.batching import Sample
    from trainers.roles import Role

    rng = random.Random(seed)
    roles = roles_for(size.seq_len)
    ordinary = size.model["vocab_size"] - len(SPECIALS)
    return [
        Sample(
            token_ids=[rng.randrange(ordinary) for _ in roles],
            roles=roles,
            logprobs=[rng.uniform(-3.0, -0.1) if r == Role.ACTION else 0.0 for r in roles],
            advantage=0.5 if i % 2 else -0.5,
            env_keep=True,
        )
        for i in range(size.batch)
    ]


def flops_per_token(size: Size, n_params: int) -> int:
    """Training FLOPs per token of a `size.seq_len` sequence: 6 · N + 12 · L · d · T (module
    docstring). The head is tied, so every parameter is in a matrix product once: N = n_params."""
    attention_width = size.model["hidden_size"]  # heads · head size: Qwen2's head size is hidden / heads
    return 6 * n_params + 12 * size.model["num_hidden_layers"] * attention_width * size.seq_len


def mfu(flops_per_token: int, tokens_per_s: float, peak_tflops: float | None) -> float | None:
    """Model FLOPs utilisation: the model's FLOPs over the tokens it ran per second, over the peak."""
    return flops_per_token * tokens_per_s / (peak_tflops * 1e12) if peak_tflops else None


def peak_tflops(device: str, facts: dict[str, Any], override: float | None) -> float | None:
    """`override`, else the bf16 dense peak of a recognised GPU (the first table key in its name)."""
    if override:
        return override
    if device != "cuda":
        return None
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in facts["name"]), None)


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def measure_learner(model_dir: Path, size: Size, device: str) -> dict[str, Any]:
    """Time `size.steps` learner steps after `size.warmup_steps`; count what the learner trained."""
    import torch

    from hillclimb.config.learner import LearnerConfig
    from trainers.batching import StepTotals
    from trainers.learner import Learner
    from trainers.models import HFModelConfig

    config = LearnerConfig(
        device=device,
        precision="bf16",
        activation_checkpointing=True,
        micro_batch_tokens=size.micro_batch_tokens,
        lr=1e-5,
    )
    # The engines' dtype (bf16, as the checkpoint): the learner loads fp32 master weights whatever it is.
    learner = Learner(HFModelConfig(name_or_path=str(model_dir), dtype="bfloat16"), config)
    samples = agent_samples(size)
    totals = StepTotals.of(samples)
    for step in range(size.warmup_steps):
        learner.train_step(samples, totals, step)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, trained, losses = [], 0, []
    for step in range(size.warmup_steps, size.warmup_steps + size.steps):
        _sync(device)
        start = time.perf_counter()
        metrics = learner.train_step(samples, totals, step)
        _sync(device)
        times.append(time.perf_counter() - start)
        trained += round(metrics["grpo/n_action_tokens"] + metrics["echo/n_env_tokens"])
        losses.append(metrics["loss"])
    median = summarize(times)["median"]
    result = {
        "step_time_s": summarize(times),
        "tokens_per_step": size.batch * size.seq_len,
        "trained_tokens_per_step": trained // size.steps,
        "trained_tokens": trained,
        "tokens_per_s": trained / size.steps / median,
        "sequence_tokens_per_s": size.batch * size.seq_len / median,
        "losses": losses,
    }
    if device == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    del learner
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()  # the memory goes to vLLM next
    return result


def generation_unavailable(device: str) -> str | None:
    """Why vLLM generation cannot be measured here, or None."""
    if device != "cuda":
        return "no CUDA device"
    try:
        import vllm  # noqa: F401
    except ImportError:
        return "vllm not installed (pip install 'hillclimb[vllm]')"
    return None


def measure_generation(model_dir: Path, size: Size, gpu_memory_utilization: float) -> dict[str, Any]:
    """Generated tokens per second of `VLLMPolicy` over `size.prompts` random prompts."""
    import random

    from hillclimb.config.rollout import SamplingParams
    from trainers.policy.base import GenerateRequest
    from trainers.policy.vllm import VLLMPolicy

    policy = VLLMPolicy(
        str(model_dir),
        dtype="bfloat16",
        gpu_memory_utilization=gpu_memory_utilization,
        max_model_len=size.prompt_len + size.new_tokens,
        seed=0,
    )
    rng = random.Random(0)
    ordinary = size.model["vocab_size"] - len(SPECIALS)
    prompts = [tuple(rng.randrange(ordinary) for _ in range(size.prompt_len)) for _ in range(size.prompts)]
    sampling = SamplingParams(max_new_tokens=size.new_tokens, temperature=1.0)

    async def timed() -> tuple[list[float], list[int]]:
        await policy.generate([GenerateRequest(prompt_ids=p, seed=i) for i, p in enumerate(prompts[:8])], sampling)
        times, tokens = [], []
        for rep in range(size.generation_reps):
            requests = [GenerateRequest(prompt_ids=p, seed=rep * len(prompts) + i) for i, p in enumerate(prompts)]
            start = time.perf_counter()
            generations = await policy.generate(requests, sampling)
            times.append(time.perf_counter() - start)
            tokens.append(sum(len(g.token_ids) for g in generations))
        return times, tokens

    times, tokens = asyncio.run(timed())
    rates = [n / t for n, t in zip(tokens, times, strict=True)]
    return {"time_s": summarize(times), "generated_tokens": tokens, "tokens_per_s": summarize(rates)["median"]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--toy", action="store_true", help="toy size, a smoke run (the default without CUDA)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default cuda where there is one")
    p.add_argument("--peak-tflops", type=float, default=None, help="device bf16 dense peak, for MFU")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.5, help="vLLM's share of the GPU")
    p.add_argument("--out", type=Path, default=None, help="result file; a full run defaults to bench/results")
    return p.parse_args(argv)


def _row(name: str, size: str, facts: dict[str, Any], case: dict[str, Any]) -> list[Any]:
    where = f"{facts['type']} ({facts['name']})"
    if case["status"] != "ok":
        return [name, size, where, "-", "-", f"{case['status']}: {case['reason']}"]
    share = "-" if case.get("mfu") is None else f"{case['mfu']:.1%}"
    if name == "learner":
        note = f"median step {case['step_time_s']['median']:.3f} s, {case['trained_tokens_per_step']} trained tokens"
    else:
        reps = case["generated_tokens"]
        note = f"{len(reps)} reps of {sum(reps) // len(reps)} tokens, median {case['time_s']['median']:.2f} s"
    return [name, size, where, f"{case['tokens_per_s']:.0f}", share, note]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here; run with --device cpu (toy size)")
    size_name = "toy" if args.toy or device == "cpu" else "full"
    size, facts = SIZES[size_name], device_facts(device)
    peak = peak_tflops(device, facts, args.peak_tflops)
    with tempfile.TemporaryDirectory(prefix="hc-learner-gpu-") as tmp:
        model_dir = Path(tmp)
        n_params = write_model_dir(model_dir, size)
        learner = {"status": "ok", **measure_learner(model_dir, size, device)}
        learner["flops_per_token"] = flops_per_token(size, n_params)
        learner["mfu"] = mfu(learner["flops_per_token"], learner["sequence_tokens_per_s"], peak)
        why = generation_unavailable(device)
        if why is None:
            generation = {"status": "ok", **measure_generation(model_dir, size, args.gpu_memory_utilization)}
        else:
            generation = {"status": "skipped", "reason": why}
    print(f"size {size_name} ({n_params / 1e6:.1f} M parameters), device {facts['type']}, peak TFLOP/s {peak}")
    headers = ["measure", "size", "device", "tokens/s", "MFU", "note"]
    print_table(headers, [_row(n, size_name, facts, c) for n, c in (("learner", learner), ("generation", generation))])
    config = {"size": size_name, "n_params": n_params, **dataclasses.asdict(size), "peak_tflops": peak}
    config |= {"dtype": "bf16 autocast, fp32 master weights, checkpointed blocks"}
    config |= {"flops_per_token": "6·N + 12·L·d·T (attention counted whole)"}
    config |= {"roles": "10% prompt, then turns of 30 action / 10 scaffold / 160 env"}
    results = {"torch": torch.__version__, "device": facts, "learner": learner, "generation": generation}
    if args.out or size_name == "full":  # a toy run is a smoke test, not a measurement of the GPU path
        print(f"\nwrote {write_result(NAME, config, results, path=args.out)}")
    return {"config": config, "results": results}


if __name__ == "__main__":
    main()
