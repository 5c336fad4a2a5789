"""LoRA against full fine-tuning on SmolLM2-135M-Instruct (CPU): bytes a weight sync carries, the
policy engine's time to take them in, and learner tokens/s.

    model dir ─► Learner (full | lora) ─► weights(): the bytes of one sync
                                       ─► HFPolicy.update_weights: load (full) or merge (LoRA) time
              ─► both learners, steps interleaved (full, lora, lora, full, ...: a busy shared host's
                 load falls on both alike) on agent-shaped random tokens (`bench.learner_gpu.agent_samples`)

Bytes count each tensor storage once (a tied LM head is the embedding's: pickling, as Ray does,
ships it once). tokens/s counts trained (ACTION and ENV) tokens per second, median step, after
one warm-up step each. Writes bench/results/lora_smollm2.json.

    python -m bench.lora [--model NAME|PATH] [--rank R] [--batch B] [--seq-len T] [--steps N]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from bench.common import markdown_table, print_table, summarize, write_result
from bench.learner_gpu import Size, agent_samples

NAME = "lora_smollm2"
SMOLLM2 = "smollm2-135m-instruct"


def _learner(model_dir: str, lora: Any, micro_batch_tokens: int) -> Any:
    from hillclimb.config.learner import LearnerConfig
    from trainers.learner import Learner
    from trainers.models import HFModelConfig

    config = LearnerConfig(lr=1e-5, micro_batch_tokens=micro_batch_tokens, lora=lora)
    return Learner(HFModelConfig(name_or_path=str(model_dir)), config)


def measure_sync(learner: Any, model_dir: str, reps: int) -> dict[str, Any]:
    """A learner's sync payload and the HF engine's time to take it in."""
    from trainers.models import HFModelConfig, load_model
    from trainers.policy.hf import HFPolicy

    weights = learner.weights()
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in weights.values()}
    engine, tokenizer = load_model(HFModelConfig(name_or_path=str(model_dir)))
    policy = HFPolicy(engine, tokenizer, threads=1)
    times = []
    for version in range(1, reps + 1):
        start = time.perf_counter()
        asyncio.run(policy.update_weights(version, weights))
        times.append(time.perf_counter() - start)
    return {
        "tensors": len(weights),
        "bytes": sum(storages.values()),
        "trainable_params": sum(p.numel() for p in learner.model.parameters() if p.requires_grad),
        "engine_load_s": summarize(times),
    }


def measure_steps(learners: dict[str, Any], size: Size) -> dict[str, Any]:
    """Step times of every learner on the same batch, interleaved; trained tokens/s at the median."""
    from trainers.batching import StepTotals

    samples = agent_samples(size)
    totals = StepTotals.of(samples)
    times: dict[str, list[float]] = {name: [] for name in learners}
    trained: dict[str, int] = {}
    for step in range(size.warmup_steps + size.steps):
        order = list(learners) if step % 2 == 0 else list(learners)[::-1]
        for name in order:
            start = time.perf_counter()
            metrics = learners[name].train_step(samples, totals, step)
            if step >= size.warmup_steps:
                times[name].append(time.perf_counter() - start)
            trained[name] = round(metrics["grpo/n_action_tokens"] + metrics["echo/n_env_tokens"])
    return {
        name: {
            "step_time_s": summarize(times[name]),
            "trained_tokens_per_step": trained[name],
            "tokens_per_s": trained[name] / summarize(times[name])["median"],
        }
        for name in learners
    }


def _table(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    rows = [
        [
            name,
            f"{r['sync']['bytes'] / 1e6:.1f}",
            f"{r['sync']['engine_load_s']['median']:.3f}",
            f"{r['learner']['step_time_s']['median']:.2f}",
            f"{r['learner']['tokens_per_s']:.0f}",
        ]
        for name, r in results.items()
    ]
    return ["", "sync MB", "engine load s (median)", "step s (median)", "trained tokens/s"], rows


def tables(record: dict[str, Any]) -> dict[str, str]:
    return {"sync_step": markdown_table(*_table(record["results"]))}


def headline(record: dict[str, Any]) -> list[tuple[str, str]]:
    results = record["results"]
    return [
        (
            "a LoRA weight sync of SmolLM2-135M against a full one",
            f"{results['lora']['sync']['bytes'] / 1e6:.1f} MB against {results['full']['sync']['bytes'] / 1e6:.1f} MB",
        )
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=SMOLLM2, help="a model name, GGUF file or Hugging Face directory")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()

    from hillclimb.config.learner import LoraConfig

    lora = LoraConfig(rank=args.rank, alpha=2.0 * args.rank)
    variants = (("full", None), ("lora", lora))
    size = Size(
        model={"vocab_size": 49_152},
        batch=args.batch,
        seq_len=args.seq_len,
        micro_batch_tokens=args.batch * args.seq_len,
        warmup_steps=1,
        steps=args.steps,
        prompts=0,
        prompt_len=0,
        new_tokens=0,
        generation_reps=0,
    )
    learners = {name: _learner(args.model, adapters, size.micro_batch_tokens) for name, adapters in variants}
    results = {name: {"sync": measure_sync(learner, args.model, reps=3)} for name, learner in learners.items()}
    for name, measured in measure_steps(learners, size).items():
        results[name]["learner"] = measured
    print_table(*_table(results))
    config = {"model": str(args.model), "lora": lora.model_dump(mode="json"), "size": vars(size) | {"device": "cpu"}}
    print(f"wrote {write_result(NAME, config, results)}")


if __name__ == "__main__":
    main()
