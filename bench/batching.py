"""Static vs continuous batching of the HF policy engine under staggered arrivals.

    16 requests (by default), one every 50 ms, max_new_tokens cycling 8/16/32/64, sampled (T = 1)
    with a seed each ─► HFPolicy(batching="static") and HFPolicy(batching="continuous"), the same
    model (SmolLM2-135M-Instruct on the CPU, one intra-op thread), reps interleaved
    ─► per request: latency (arrival → result); per run: tokens / (last result − first arrival)

Both engines sample the same tokens for the same seeds (up to floating point), so they do the
same work; what differs is when a request may start and when it may return. Writes
`bench/results/batching.json`; `tables(record)` and `headline(record)` render it.

    python -m bench.batching [--reps 2] [--requests 16] [--gap-ms 50] [--lengths 8,16,32,64]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from bench.common import markdown_table, median_range, percentile, summarize, write_result

NAME = "smollm2-135m-instruct"
MODES = ("static", "continuous")
PROMPTS = (
    "List the files in the current directory.",
    "What port does the web server in app.log listen on? Answer with the number only.",
    "Write a one-line shell command that counts the lines of every .py file under src/.",
    "Summarise: the deploy failed because the migration locked the users table for ten minutes.",
)


async def _run(policy: Any, tokenizer: Any, args: argparse.Namespace, rep: int) -> dict[str, Any]:
    """One staggered run: per-request latencies (s) and the run's tokens per second."""
    from hillclimb.config.rollout import SamplingParams
    from trainers.policy.base import GenerateRequest

    lengths = [int(n) for n in args.lengths.split(",")]
    messages = [[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}] for i in range(args.requests)]
    texts = [tokenizer.hf.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in messages]
    prompts = [tuple(tokenizer.encode(text)) for text in texts]
    began = time.perf_counter()

    async def request(i: int) -> tuple[float, int]:
        arrival = began + i * args.gap_ms / 1000
        await asyncio.sleep(max(0.0, arrival - time.perf_counter()))
        sampling = SamplingParams(max_new_tokens=lengths[i % len(lengths)], temperature=1.0)
        (generation,) = await policy.generate([GenerateRequest(prompt_ids=prompts[i], seed=1000 * rep + i)], sampling)
        return time.perf_counter() - arrival, len(generation.token_ids)

    done = await asyncio.gather(*(request(i) for i in range(args.requests)))
    elapsed = time.perf_counter() - began
    return {"latency_s": [lat for lat, _ in done], "tokens": sum(n for _, n in done), "elapsed_s": elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--gap-ms", type=float, default=50.0)
    parser.add_argument("--lengths", default="8,16,32,64", help="max_new_tokens, cycled over the requests")
    args = parser.parse_args()

    from hillclimb.config.models import HFModelConfig
    from trainers.models.load import load_model
    from trainers.policy.hf import HFPolicy

    model, tokenizer = load_model(HFModelConfig(name_or_path=NAME))
    engines = {mode: HFPolicy(model, tokenizer, threads=1, batching=mode) for mode in MODES}
    for policy in engines.values():  # warm-up: thread pools, allocator
        asyncio.run(_run(policy, tokenizer, argparse.Namespace(**{**vars(args), "requests": 2}), rep=-1))
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    for rep in range(args.reps):
        for mode in MODES if rep % 2 == 0 else MODES[::-1]:
            runs[mode].append(asyncio.run(_run(engines[mode], tokenizer, args, rep)))
            print(f"rep {rep} {mode}: {runs[mode][-1]['elapsed_s']:.1f} s", flush=True)

    results = {mode: _summary(runs[mode]) for mode in MODES}
    config = {**vars(args), "model": NAME, "threads": 1, "temperature": 1.0}
    record = {"config": config, "results": results}
    for table in tables(record).values():
        print(table)
    path = write_result("batching", config, results)
    print(f"wrote {path}")


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    latencies = [lat for run in runs for lat in run["latency_s"]]
    return {
        "latency_s": summarize(latencies),
        "latency_p50_s": percentile(latencies, 50),
        "latency_p95_s": percentile(latencies, 95),
        "tokens_per_s": summarize([run["tokens"] / run["elapsed_s"] for run in runs]),
        "runs": runs,
    }


def tables(record: dict[str, Any]) -> dict[str, str]:
    """Markdown tables of a `batching.json` record: `latency` (one row per mode, then the run's setup)."""
    config, results = record["config"], record["results"]
    rows = [
        [
            mode,
            f"{results[mode]['latency_p50_s']:.2f} s",
            f"{results[mode]['latency_p95_s']:.2f} s",
            f"{results[mode]['latency_s']['mean']:.2f} s",
            median_range(results[mode]["tokens_per_s"], "{:.1f}"),
        ]
        for mode in MODES
    ]
    table = markdown_table(["batching", "p50 latency", "p95 latency", "mean latency", "tokens/s (runs)"], rows)
    setup = (
        f"{config['requests']} requests, one every {config['gap_ms']:g} ms, max_new_tokens {config['lengths']}, "
        f"{config['model']}, {config['reps']} reps a mode."
    )
    return {"latency": f"{table}\n\n{setup}"}


def headline(record: dict[str, Any]) -> list[tuple[str, str]]:
    """README rows: (what, figure) for continuous against static batching."""
    static, continuous = record["results"]["static"], record["results"]["continuous"]
    config = record["config"]
    what = f"HF engine, {config['requests']} staggered requests ({config['gap_ms']:g} ms apart), continuous vs static"
    return [
        (
            f"{what}: p50 / p95 latency",
            f"{continuous['latency_p50_s']:.2f} / {continuous['latency_p95_s']:.2f} s vs "
            f"{static['latency_p50_s']:.2f} / {static['latency_p95_s']:.2f} s",
        ),
        (
            f"{what}: tokens/s",
            f"{continuous['tokens_per_s']['median']:.1f} vs {static['tokens_per_s']['median']:.1f}",
        ),
    ]


if __name__ == "__main__":
    main()
