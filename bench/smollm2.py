"""SmolLM2-135M-Instruct, the packaged real model, on this machine: how long it takes to load,
how much memory it holds, and how fast the policy engine decodes it.

- `convert`: the first load of the GGUF (dequantize, save as a Hugging Face directory), in a
  fresh $HILLCLIMB_HOME, in a subprocess: what a machine pays once.
- `load`: every later load from the converted directory, in a fresh subprocess each repetition
  (imports excluded, model + tokenizer included); RSS after loading, from that process.
- `decode`: `HFPolicy` (the engine rollouts use, one intra-op thread as configured by default)
  generating up to `--new-tokens` tokens for each of B chat prompts at temperature 1 (EOS ends a
  row early, as in rollouts: tokens/s counts tokens generated), B = 1 and 16, the lean Llama path
  and transformers' forward interleaved in every repetition, so load drifts hit both alike.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from bench.common import markdown_table, print_table, summarize, write_result
from orchestrator.provenance import machine

NAME = "smollm2-135m-instruct"

_LOAD_CHILD = """
import json, time, sys
from bench.common import status_kib
from hillclimb.config.models import HFModelConfig
from trainers.models.load import load_model
began = time.perf_counter()
load_model(HFModelConfig(name_or_path=sys.argv[1]))
print(json.dumps({"seconds": time.perf_counter() - began, "rss_mib": status_kib("VmRSS") / 1024}))
"""


def _timed_load(env: dict[str, str], model: str = NAME) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", _LOAD_CHILD, model], env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def _decode(policy, tokenizer, batch: int, new_tokens: int, rep: int) -> float:  # type: ignore[no-untyped-def]
    from hillclimb.config.rollout import SamplingParams
    from trainers.policy.base import GenerateRequest

    subjects = ["a shell", "a log file", "a test suite", "a compiler", "a server", "a cron job", "git", "a disk"]
    prompts = [
        tokenizer.hf.apply_chat_template(
            [{"role": "user", "content": f"Write a long story about {subjects[i % len(subjects)]}."}],
            add_generation_prompt=True,
            tokenize=False,
        )
        for i in range(batch)
    ]
    requests = [
        GenerateRequest(prompt_ids=tuple(tokenizer.encode(p)), seed=1000 * rep + i) for i, p in enumerate(prompts)
    ]
    began = time.perf_counter()
    generations = policy.generate_sync(requests, SamplingParams(max_new_tokens=new_tokens, temperature=1.0))
    return sum(len(g.token_ids) for g in generations) / (time.perf_counter() - began)


def _table(results: dict) -> tuple[list[str], list[list[str]]]:
    rows = [["first load (GGUF → directory)", f"{results['convert_s']:.1f} s", ""]]
    load = results["load_s"]
    rows.append(["load (converted)", f"{load['median']:.2f} s", f"{load['min']:.2f}–{load['max']:.2f}"])
    rss = results["rss_after_load_mib"]
    rows.append(["RSS after load", f"{rss['median']:.0f} MiB", f"{rss['min']:.0f}–{rss['max']:.0f}"])
    for case, stats in results["decode_tokens_per_s"].items():
        rows.append([f"decode {case}", f"{stats['median']:.1f} tok/s", f"{stats['min']:.1f}–{stats['max']:.1f}"])
    return ["SmolLM2-135M-Instruct", "median", "range"], rows


def tables(record: dict) -> dict[str, str]:
    return {"load_decode": markdown_table(*_table(record["results"]))}


def headline(record: dict) -> list[tuple[str, str]]:
    rates = record["results"]["decode_tokens_per_s"]
    return [
        (
            "SmolLM2-135M-Instruct on CPU: decode, batch 1 / 16 (lean path)",
            f"{rates['lean B=1']['median']:.1f} / {rates['lean B=16']['median']:.1f} tokens/s",
        )
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()

    import torch

    from hillclimb.config.models import HFModelConfig
    from trainers.models.load import load_model
    from trainers.models.resolve import resolve_model
    from trainers.policy.hf import HFPolicy

    gguf = resolve_model(NAME).location  # the pulled file, converted again in an empty home
    with tempfile.TemporaryDirectory() as home:
        convert = _timed_load({**os.environ, "HILLCLIMB_HOME": home}, gguf)
    loads = [_timed_load(dict(os.environ)) for _ in range(args.reps)]

    model, tokenizer = load_model(HFModelConfig(name_or_path=NAME))
    engines = {
        "lean": HFPolicy(model, tokenizer, threads=1),
        "transformers": HFPolicy(model, tokenizer, threads=1, lean=False),
    }
    rates: dict[str, list[float]] = {f"{path} B={b}": [] for b in (1, 16) for path in engines}
    _decode(engines["lean"], tokenizer, 2, 4, rep=-1)  # warm-up: threads, allocator
    for rep in range(args.reps):
        for batch in (1, 16):
            order = list(engines) if rep % 2 == 0 else list(engines)[::-1]
            for path in order:
                rates[f"{path} B={batch}"].append(_decode(engines[path], tokenizer, batch, args.new_tokens, rep))

    results = {
        "convert_s": convert["seconds"],
        "load_s": summarize([x["seconds"] for x in loads]),
        "rss_after_load_mib": summarize([x["rss_mib"] for x in loads]),
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(next(model.parameters()).dtype),
        "decode_tokens_per_s": {case: summarize(samples) for case, samples in rates.items()},
        "torch_threads": torch.get_num_threads(),
    }
    print_table(*_table(results))
    print(f"host load (1/5/15 min): {machine()['load_avg_1_5_15_min']}")
    path = write_result("smollm2", {"reps": args.reps, "new_tokens": args.new_tokens, "model": NAME}, results)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
