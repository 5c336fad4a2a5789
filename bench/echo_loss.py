"""GRPO + ECHO loss from hidden states: our tiled LM head versus the naive full-logits reference.

Every contender computes the same loss (GRPO on ACTION targets + λ · CE on ENV targets, λ = 0.05,
on-policy, token-normalised) from final hidden states [1, T, H] and an LM head [V, H], forward and
backward (gradients for hidden states and head):

- `fused` (the learner's default off CUDA): `trainers.losses.loss_from_hidden` with
  `logprob_impl="fused"`: only the positions a term trains go through the LM head, in chunks of
  `chunk_tokens · chunk_vocab / V` tokens × the whole vocabulary (`LossConfig`'s defaults unless
  overridden), the gradients computed during the forward pass.
- `chunked` (with `--impls`): the same positions in tiles of `chunk_tokens` × `chunk_vocab`
  logits, log-probs first, each tile's logits recomputed in backward.
- `liger` (CUDA, when a liger-kernel with the reduction="none" fix is installed): the same
  through Liger's fused kernel.
- `naive`: logits for every position → log_softmax → gather → the same loss, as OpenEnv's
  `examples/echo_world_model/echo_loss.py` does, so [T, V] fp32 tensors exist several times over.

Roles follow an agent trajectory: 10 % prompt, then turns of 30 ACTION, 10 SCAFFOLD, 160 ENV
tokens (13.5 % / 4.5 % / 72 % overall), so 85.5 % of positions are trained.

Method. Each sequence length runs in a fresh subprocess, so no size's allocations hide in
another's numbers. The child warms every contender up once at min(T, 1024) tokens (threads,
kernels), then times `--reps` passes per contender, interleaved (naive, fused, naive, ...) so
a drifting machine load hits all of them alike; the median is reported, with min/max/mean/std
in the JSON, plus process CPU time on CPU (this machine is shared, so wall time is noisy).
Memory is the peak *extra* memory of one forward+backward, gradients included:
- CPU: tracemalloc cannot see torch's allocations and the profiler attributes memory per op
  rather than giving a process peak, so we read the kernel's resident-set high-water mark. The
  child runs with MALLOC_MMAP_THRESHOLD_=128 KiB, so every large tensor is its own mmap and goes
  back to the OS when freed (RSS tracks live tensors, no allocator cache hides or reuses
  anything); before each pass it resets the high-water mark (`echo 5 > /proc/self/clear_refs`)
  and reads VmRSS as the baseline; after it, VmHWM. Peak = VmHWM - baseline. A per-child
  RLIMIT_AS of baseline + budget turns a runaway allocation into an error, not an OOM kill.
- CUDA: torch.cuda.max_memory_allocated() - memory_allocated() before the pass (after a reset).
Naive cases whose estimated peak exceeds the budget (`--memory-budget-gb`; default the smaller of
12 GiB and 60 % of available memory) are not run but recorded as skipped with what they would
need: three fp32 [T, V] tensors are live at once inside log_softmax's backward (its saved output,
gather's gradient, its own gradient), 12 bytes per logit, +10 % (measured at T = 1024 here:
1,780 MiB against 3·T·V·4 = 1,780 MiB).

Precision: fp32 hidden states and head on CPU (CPU bf16 matmuls are slow and not what a learner
runs); bf16 on CUDA. Log-sum-exp in fp32 in every contender.

Throughput section (`mfu`): the Qwen2.5-0.5B head shape (H = 896, V = 151,936). tokens/s is
sequence tokens per second of the loss's forward+backward. FLOPs counted are the LM-head matmuls
only — 2·N·H·V forward, 4·N·H·V backward, N = trained positions — so MFU = 6·N·H·V / time / peak;
softmax, gather and loss arithmetic (O(N·V)) and the model trunk are excluded. HFU counts what
each contender really multiplies: `fused` and `liger` 6·N·H·V, `chunked` recomputes logits in
backward (8·N·H·V), the naive one multiplies every position (6·T·H·V). Peak is the GPU's bf16
dense tensor-core peak when recognised, or `--peak-tflops`; on CPU MFU is left out unless given.

    python -m bench.echo_loss [--device cpu|cuda] [--quick] [--impls naive fused chunked] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import markdown_table, print_table, result_path, status_kib, summarize
from hillclimb.config.losses import LossConfig  # pydantic only: the parent imports torch in main()
from orchestrator.provenance import commit, machine

LAMBDA = 0.05
MIB = 2**20
GIB = 2**30
# bf16 dense tensor-core peak, TFLOP/s (vendor datasheets); the first name found in the device name wins.
PEAK_BF16_TFLOPS = {
    "H200": 989.4,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 989.4,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
}


def roles_for(seq_len: int) -> list[int]:
    """Role of each target: 10 % PROMPT, then turns of 30 ACTION, 10 SCAFFOLD, 160 ENV."""
    from trainers.roles import Role

    prompt = seq_len // 10
    turn = [Role.ACTION] * 30 + [Role.SCAFFOLD] * 10 + [Role.ENV] * 160
    body = [int(turn[i % len(turn)]) for i in range(seq_len - prompt)]
    return [int(Role.PROMPT)] * prompt + body


def estimate_peak_bytes(impl: str, seq_len: int, hidden: int, args: argparse.Namespace) -> int:
    """Rough upper estimate of one forward+backward's extra memory (see the module docstring)."""
    vocab, cuda = args.vocab, args.device == "cuda"
    activations = seq_len * hidden * 4 * 4  # hidden grad, selections, small [T] tensors
    logits = seq_len * vocab * 4  # one fp32 [T, V] tensor
    if impl == "naive":
        # Inside log_softmax's backward: its saved output, gather's gradient, its own gradient;
        # or, for short T, the last [T, V] gradient next to the V×H weight gradient.
        return int(1.1 * (max(3 * logits, logits + vocab * hidden * 4) + activations))
    if impl == "chunked":
        tile = min(args.chunk_tokens, seq_len) * min(args.chunk_vocab, vocab)  # fp32 (+ bf16 copies on CUDA)
    else:  # fused (and liger): chunks of whole-vocabulary rows
        tile = min(max(1, args.chunk_tokens * args.chunk_vocab // vocab), seq_len) * vocab
    weight_grad = vocab * hidden * (6 if cuda else 4)  # fp32 accumulator (+ bf16 result on CUDA)
    return int(1.1 * (tile * (8 if cuda else 4) + weight_grad + activations))


# ----------------------------------------------------------------------------------------- child


class _Memory:
    """Peak extra memory of a region: CUDA allocator stats, or the RSS high-water mark on CPU."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda

    def start(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            self.base = status_kib("VmRSS") * 1024

    def peak(self) -> int:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - self.base
        return status_kib("VmHWM") * 1024 - self.base


def _loss_fn(impl: str, batch: Any, config: LossConfig) -> Any:
    import torch

    from trainers.losses import loss_from_hidden, loss_from_logprobs, naive_token_logprobs

    def naive(hidden_BTH: torch.Tensor, weight_VH: torch.Tensor) -> torch.Tensor:
        logprobs_BT = naive_token_logprobs(hidden_BTH, weight_VH, batch.targets_BT)
        return loss_from_logprobs(logprobs_BT, batch, config, step=0)[0]

    def ours(hidden_BTH: torch.Tensor, weight_VH: torch.Tensor) -> torch.Tensor:
        cfg = config.model_copy(update={"logprob_impl": impl})  # never "auto"
        return loss_from_hidden(hidden_BTH, weight_VH, batch, cfg, step=0)[0]

    return naive if impl == "naive" else ours


def _inputs(seq_len: int, vocab: int, hidden: int, device: str, dtype: Any, seed: int = 0) -> tuple[Any, Any, Any]:
    import torch

    from trainers.losses import LossBatch

    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(1, seq_len, hidden, generator=gen).to(device=device, dtype=dtype).requires_grad_()
    w = (0.02 * torch.randn(vocab, hidden, generator=gen)).to(device=device, dtype=dtype).requires_grad_()
    batch = LossBatch(
        targets_BT=torch.randint(0, vocab, (1, seq_len), generator=gen).to(device),
        roles_BT=torch.tensor([roles_for(seq_len)], device=device),
        advantages_B=torch.tensor([0.5], device=device),
    )
    return h, w, batch


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Time `reps` forward+backward passes of each implementation at one size, interleaved."""
    import torch

    from trainers.losses import ConstantLambda, EchoConfig
    from trainers.roles import Role

    cuda = spec["device"] == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    config = LossConfig(
        echo=EchoConfig(schedule=ConstantLambda(value=LAMBDA)),
        chunk_tokens=spec["chunk_tokens"],
        chunk_vocab=spec["chunk_vocab"],
    )
    memory = _Memory(cuda)

    def one_pass(impl: str, h: Any, w: Any, batch: Any) -> tuple[float, float, int]:
        h.grad = w.grad = None
        memory.start()
        t0, c0 = time.perf_counter(), time.process_time()
        _loss_fn(impl, batch, config)(h, w).backward()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0, time.process_time() - c0, memory.peak()

    warm = _inputs(min(spec["seq_len"], 1024), spec["vocab"], spec["hidden"], spec["device"], dtype)
    for impl in spec["impls"]:
        one_pass(impl, *warm)
    del warm
    h, w, batch = _inputs(spec["seq_len"], spec["vocab"], spec["hidden"], spec["device"], dtype)
    if not cuda:  # a runaway allocation becomes a RuntimeError here instead of an OOM kill
        cap = status_kib("VmSize") * 1024 + int(spec["budget_bytes"])
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    results: dict[str, dict[str, Any]] = {i: {"times_s": [], "cpu_s": [], "peaks_bytes": []} for i in spec["impls"]}
    for _ in range(spec["reps"]):
        for impl, out in results.items():
            if "error" in out:
                continue
            try:
                t, c, p = one_pass(impl, h, w, batch)
            except (RuntimeError, MemoryError) as e:  # allocation refused by the cap or the device
                out["error"] = str(e).splitlines()[0][:300]
                continue
            out["times_s"].append(t)
            out["cpu_s"].append(c)
            out["peaks_bytes"].append(p)
    trained = int(((batch.roles_BT == Role.ACTION) | (batch.roles_BT == Role.ENV)).sum())
    return {"impls": results, "trained_tokens": trained}


# ---------------------------------------------------------------------------------------- parent


def _spawn(spec: dict[str, Any]) -> dict[str, Any]:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(128 * 1024), MALLOC_TRIM_THRESHOLD_=str(128 * 1024))
    cmd = [sys.executable, "-m", "bench.echo_loss", "--_child", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parent.parent)
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])[-400:]
        status = "oom" if proc.returncode in (-9, 137) else "failed"
        return {"error": f"{status} (rc {proc.returncode}): {tail}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(section: str, seq_len: int, hidden: int, impls: list[str], args: argparse.Namespace) -> list[dict]:
    """One child process per size runs every implementation that fits the budget; one case per implementation."""
    cases: dict[str, dict[str, Any]] = {}
    for impl in impls:
        need = estimate_peak_bytes(impl, seq_len, hidden, args)
        cases[impl] = {"section": section, "impl": impl, "seq_len": seq_len, "vocab": args.vocab, "hidden": hidden}
        cases[impl]["estimated_peak_mib"] = round(need / MIB)
        if need > args.budget_bytes:
            reason = f"OOM/skipped (needs >= {need / GIB:.1f} GiB, budget {args.budget_bytes / GIB:.1f} GiB)"
            cases[impl].update(status="skipped", reason=reason)
    runnable = [i for i, c in cases.items() if "status" not in c]
    spec = {"impls": runnable, "seq_len": seq_len, "vocab": args.vocab, "hidden": hidden, "device": args.device}
    spec |= {"chunk_tokens": args.chunk_tokens, "chunk_vocab": args.chunk_vocab, "reps": args.reps}
    spec["budget_bytes"] = args.budget_bytes
    print(f"  {section}: T={seq_len} H={hidden} {'/'.join(runnable)} ...", file=sys.stderr, flush=True)
    out = _spawn(spec) if runnable else {"impls": {}}
    for impl in runnable:
        got = out.get("impls", {}).get(impl, {"error": out.get("error", "no result")})
        if "error" in got:
            cases[impl].update(status="failed", reason=got["error"])
            continue
        cases[impl].update(
            status="ok",
            trained_tokens=out["trained_tokens"],
            time_s=summarize(got["times_s"]),
            cpu_time_s=summarize(got["cpu_s"]),
            peak_mib=summarize([p / MIB for p in got["peaks_bytes"]]),
        )
    return list(cases.values())


def add_ratios(cases: list[dict]) -> None:
    """Ours vs naive at the same size: time and peak memory (vs the estimate if naive was skipped)."""
    naive = {(c["section"], c["seq_len"]): c for c in cases if c["impl"] == "naive"}
    for c in cases:
        ref = naive.get((c["section"], c["seq_len"]))
        if c["impl"] == "naive" or c["status"] != "ok" or ref is None:
            continue
        if ref["status"] == "ok":
            c["time_vs_naive"] = c["time_s"]["median"] / ref["time_s"]["median"]
            c["cpu_time_vs_naive"] = c["cpu_time_s"]["median"] / ref["cpu_time_s"]["median"]
            c["mem_vs_naive"] = c["peak_mib"]["max"] / ref["peak_mib"]["max"]
        else:
            c["mem_vs_naive_estimate"] = c["peak_mib"]["max"] / ref["estimated_peak_mib"]


def add_throughput(case: dict, peak_tflops: float | None) -> None:
    if case["status"] != "ok":
        return
    n, t, h, v = case["trained_tokens"], case["seq_len"], case["hidden"], case["vocab"]
    sec = case["time_s"]["median"]
    model_flops = 6 * n * h * v
    hw_flops = {"naive": 6 * t * h * v, "chunked": 8 * n * h * v}.get(case["impl"], model_flops)
    case["tokens_per_s"] = t / sec
    case["model_tflops_per_s"] = model_flops / sec / 1e12
    case["hardware_tflops_per_s"] = hw_flops / sec / 1e12
    case["mfu"] = model_flops / sec / (peak_tflops * 1e12) if peak_tflops else None
    case["hfu"] = hw_flops / sec / (peak_tflops * 1e12) if peak_tflops else None


def device_facts(device: str) -> dict[str, Any]:
    import torch

    facts: dict[str, Any] = {"type": device, "torch_threads": torch.get_num_threads()}
    if device == "cuda":
        facts["name"] = torch.cuda.get_device_name()
        facts["memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / GIB, 1)
    else:
        facts["name"] = _cpu_model()
    return facts


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _peak_tflops(args: argparse.Namespace, facts: dict[str, Any]) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops
    if args.device != "cuda":
        return None
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in facts["name"]), None)


def _default_budget(device: str) -> int:
    if device == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info()
        return int(0.85 * free)
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    available = next(int(x.split()[1]) * 1024 for x in meminfo if x.startswith("MemAvailable"))
    return min(12 * GIB, int(0.6 * available))


def _fmt(c: dict, key: str, spec: str = ".2f") -> str:
    return "-" if c.get(key) is None else format(c[key], spec)


def _scaling_table(cases: list[dict]) -> tuple[list[str], list[list[Any]]]:
    rows = []
    for c in cases:
        if c["status"] != "ok":
            rows.append([c["seq_len"], c["impl"], c["status"], "-", "-", "-", c.get("reason", ""), "-"])
            continue
        mem = _fmt(c, "mem_vs_naive")
        if "mem_vs_naive_estimate" in c:
            mem = f"{c['mem_vs_naive_estimate']:.3f} (vs est.)"
        time_s, cpu_s, peak = c["time_s"]["median"], c["cpu_time_s"]["median"], c["peak_mib"]["max"]
        ratios = [_fmt(c, "time_vs_naive"), _fmt(c, "cpu_time_vs_naive")]
        rows.append([c["seq_len"], c["impl"], f"{time_s:.3f}", f"{cpu_s:.1f}", *ratios, f"{peak:.0f}", mem])
    return ["seq len", "impl", "median s", "cpu s", "time vs naive", "cpu vs naive", "peak MiB", "mem vs naive"], rows


def _mfu_table(mfu: list[dict]) -> tuple[list[str], list[list[Any]]]:
    rows = []
    for c in mfu:
        if c["status"] != "ok":
            rows.append([c["seq_len"], c["hidden"], c["impl"], c["status"], "-", "-", "-"])
            continue
        tflops = f"{c['model_tflops_per_s']:.3f}"
        mfu_s = "-" if c["mfu"] is None else f"{c['mfu']:.1%}"
        hfu_s = "-" if c["hfu"] is None else f"{c['hfu']:.1%}"
        rows.append([c["seq_len"], c["hidden"], c["impl"], f"{c['tokens_per_s']:.0f}", tflops, mfu_s, hfu_s])
    return ["seq len", "hidden", "impl", "tokens/s", "head TFLOP/s", "MFU", "HFU"], rows


def tables(record: dict) -> dict[str, str]:
    return {
        "scaling": markdown_table(*_scaling_table(record["cases"])),
        "mfu": markdown_table(*_mfu_table(record["mfu"])),
    }


def headline(record: dict) -> list[tuple[str, str]]:
    shortest = min(c["seq_len"] for c in record["cases"])
    at_shortest = {c["impl"]: c for c in record["cases"] if c["seq_len"] == shortest}
    naive, fused = at_shortest["naive"], at_shortest["fused"]
    device = record["device"]["type"].upper()
    peaks = f"{fused['peak_mib']['max']:,.0f} MiB against {naive['peak_mib']['max']:,.0f} MiB"
    return [
        (
            f"GRPO + ECHO loss, {shortest:,} tokens, {device}: peak memory, fused against naive",
            f"{peaks} ({fused['mem_vs_naive']:.2f}×)",
        )
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--quick", action="store_true", help="tiny sizes, a smoke run (seconds)")
    p.add_argument("--seq-lens", type=int, nargs="+", default=[2048, 8192, 32768])
    p.add_argument("--vocab", type=int, default=151_936)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--reps", type=int, default=3, help="timed passes per contender (median reported)")
    p.add_argument(
        "--impls",
        nargs="+",
        choices=["naive", "fused", "chunked"],
        default=["naive", "fused"],
        help="contenders (liger is added on CUDA when installed)",
    )
    p.add_argument("--chunk-tokens", type=int, default=None, help="tile rows; default LossConfig's")
    p.add_argument("--chunk-vocab", type=int, default=None, help="tile columns; default LossConfig's")
    p.add_argument("--memory-budget-gb", type=float, default=None, help="skip naive cases estimated above this")
    p.add_argument("--mfu-hidden", type=int, default=896, help="hidden size of the throughput case (Qwen2.5-0.5B)")
    p.add_argument("--mfu-seq-len", type=int, default=None, help="default 8192 on CUDA, 2048 on CPU")
    p.add_argument("--skip-mfu", action="store_true", help="leave out the throughput section")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (bf16 dense)")
    p.add_argument("--out", type=Path, default=None, help="default bench/results/echo_loss_<device>.json")
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.seq_lens, args.vocab, args.hidden = [256, 1024], 4096, 64
        args.chunk_tokens, args.chunk_vocab = args.chunk_tokens or 256, args.chunk_vocab or 1024
        args.mfu_hidden, args.mfu_seq_len = 56, 512
    args.mfu_seq_len = args.mfu_seq_len or (8192 if args.device == "cuda" else 2048)
    args.chunk_tokens = args.chunk_tokens or LossConfig().chunk_tokens
    args.chunk_vocab = args.chunk_vocab or LossConfig().chunk_vocab
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args._child is not None:
        print(json.dumps(run_child(json.loads(args._child))))
        return
    import torch

    from trainers.losses import liger_available

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here; run with --device cpu")
    args.budget_bytes = int(args.memory_budget_gb * GIB) if args.memory_budget_gb else _default_budget(args.device)
    facts = device_facts(args.device)
    peak = _peak_tflops(args, facts)
    impls = args.impls + (["liger"] if args.device == "cuda" and liger_available() else [])
    cases = [c for t in args.seq_lens for c in measure("scaling", t, args.hidden, impls, args)]
    mfu = [] if args.skip_mfu else measure("mfu", args.mfu_seq_len, args.mfu_hidden, impls, args)
    add_ratios(cases + mfu)
    for c in mfu:
        add_throughput(c, peak)
    print_table(*_scaling_table(cases))
    if mfu:
        print()
        print_table(*_mfu_table(mfu))
    config = {k: getattr(args, k) for k in ("quick", "seq_lens", "vocab", "hidden", "reps", "impls", "chunk_tokens")}
    config |= {"chunk_vocab": args.chunk_vocab, "mfu_hidden": args.mfu_hidden, "mfu_seq_len": args.mfu_seq_len}
    config |= {
        "dtype": "bfloat16" if args.device == "cuda" else "float32",
        "lambda": LAMBDA,
        "batch": 1,
        "roles": "10% prompt, then turns of 30 action / 10 scaffold / 160 env",
        "warmup": "1 pass per contender at min(T, 1024) tokens",
        "order": "one process per size; contenders interleaved within each rep",
        "budget_gib": round(args.budget_bytes / GIB, 2),
        "peak_tflops": peak,
        "memory_method": "cuda max_memory_allocated delta"
        if args.device == "cuda"
        else "VmHWM - VmRSS per pass (clear_refs), MALLOC_MMAP_THRESHOLD_=128KiB",
    }
    payload = {
        "benchmark": "echo_loss",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "commit": commit(),
        "torch": torch.__version__,
        "device": facts,
        "machine": machine(),
        "config": config,
        "cases": cases,
        "mfu": mfu,
    }
    out = args.out or result_path(f"echo_loss_{args.device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
