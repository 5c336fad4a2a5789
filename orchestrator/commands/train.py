"""`hillclimb train`: the training loop, with progress bars and a closing summary.

Ctrl-C or SIGTERM stops it cleanly: the summary and plots of what it did are written, it says
how to resume, and it exits with status 130. A run started with SIGINT ignored (`hillclimb train
... &` in a script, which has no job control) keeps ignoring it, as Unix programs do: stop that
one with SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Awaitable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from orchestrator.commands.rollout import (
    AddressOption,
    ConfigArg,
    DryRunOption,
    MetricsPortOption,
    SetOption,
    SkillOption,
    resolved_config,
    say_whole,
    serve_run_metrics,
)
from orchestrator.console import console, reports_errors

T = TypeVar("T")
INTERRUPTED = 130  # the shell's status for a run stopped by SIGINT

AblationOption = Annotated[
    int,
    typer.Option(
        "--ablation",
        help="Instead: a λ sweep, one run per λ and seed over this many seeds, at equal RL steps (the time budget "
        "is dropped); runs that finished before are read back. Prints a table per λ and writes a result file.",
    ),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="With --dry-run: one JSON object, the resolved config and the placement plan.")
]
GpuMemoryOption = Annotated[
    float, typer.Option("--gpu-memory", help="With --dry-run: each GPU's memory in GiB, for the plan's estimates.")
]
GpusPerNodeOption = Annotated[
    int, typer.Option("--gpus-per-node", help="With --dry-run: GPUs a node (one learner pod) holds, for the plan.")
]
LambdasOption = Annotated[
    str | None,
    typer.Option(
        "--lambdas",
        help="With --ablation: the λ values, e.g. 0,0.005,0.05,0.2,1 (default: the config's λ and 0, ECHO on vs off).",
    ),
]


@reports_errors
def train(
    config: ConfigArg,
    set_: SetOption = None,
    address: AddressOption = None,
    dry_run: DryRunOption = False,
    metrics_port: MetricsPortOption = None,
    ablation: AblationOption = 0,
    lambdas: LambdasOption = None,
    skill: SkillOption = None,
    as_json: JsonOption = False,
    gpu_memory: GpuMemoryOption = 80.0,
    gpus_per_node: GpusPerNodeOption = 8,
) -> None:
    """Train: sandboxed rollouts, GRPO + ECHO learners, held-out evaluation; writes a run directory.

    With --dry-run: the resolved config (stdout) and where the learners and the policy engine go,
    with the memory each GPU needs estimated from the model's config.json (stderr; --json puts
    both in one object on stdout)."""
    from rich.progress import Progress

    from orchestrator.run_lifecycle import run_directory
    from orchestrator.train import Trainer, check_trainable
    from orchestrator.train_display import TrainDisplay

    cfg = resolved_config(config, set_, address, metrics_port, skill)
    if dry_run:
        _dry_run(cfg, as_json, gpu_memory, gpus_per_node)
        return
    check_trainable(cfg)  # before the run directory, or an earlier run's, is touched
    if lambdas is not None and not ablation:
        from hillclimb.errors import ConfigError

        raise ConfigError("--lambdas sets the λ values of a sweep: give --ablation SEEDS too")
    if ablation:
        _ablate(cfg, ablation, lambdas)
        return
    serve_run_metrics(cfg.run)
    with run_directory(cfg, "train", say_whole) as run_dir:
        say_whole(f"run: {run_dir}")
        with Progress(*TrainDisplay.COLUMNS, console=console) as progress:
            display = TrainDisplay(progress, cfg.train)
            trainer = Trainer(cfg, run_dir, display.report)
            try:
                summary = asyncio.run(_until_terminated(trainer.run()))
            except (KeyboardInterrupt, asyncio.CancelledError):
                summary = None
    if summary is None:
        _report_interrupted(trainer.finish(interrupted=True), run_dir)
        raise typer.Exit(INTERRUPTED)
    _print_summary(summary, run_dir)


def _dry_run(cfg: Any, as_json: bool, gpu_memory: float, gpus_per_node: int) -> None:
    from orchestrator.placement_plan import placement_plan
    from orchestrator.plan_display import print_plan

    resolved = cfg.model_dump(mode="json")
    plan = placement_plan(cfg, gpu_memory, gpus_per_node) if cfg.policy.type in ("hf", "vllm") else None
    if as_json:
        print(json.dumps({"config": resolved, "plan": plan}, indent=2))
        return
    console.print_json(json.dumps(resolved))
    print_plan(plan, cfg.policy.type)


async def _until_terminated(work: Awaitable[T]) -> T:
    """SIGTERM stops the run the way Ctrl-C does: the work is cancelled and cleans up after itself."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await work
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def _report_interrupted(summary: dict[str, Any], run_dir: Path) -> None:
    from trainers.checkpoint import latest_checkpoint

    checkpoint = latest_checkpoint(run_dir / "checkpoints")
    say_whole(
        f"[yellow]interrupted after {summary['rl_steps']} RL steps[/]; summary.json and plots/ in {run_dir} "
        "cover what it did"
    )
    start = f"from {checkpoint}" if checkpoint else "with no checkpoint yet: training starts over, its ledger kept"
    say_whole(f"to resume ({start}): run the same command with --set run.resume=true")


def _print_summary(summary: dict[str, Any], run_dir: Path) -> None:
    from rich.table import Table

    ce, pass1 = summary["heldout_env_ce"], summary["heldout_pass1"]
    table = Table("figure", "value", title="run summary")
    table.add_row(
        "held-out env-token CE (nats/token)",
        f"{_num(ce['initial'])} → {_num(ce['after_warmup'])} (after warm-up) → {_num(ce['final'])}",
    )
    table.add_row(
        "fall from initial / during RL", f"{_num(ce['fall_from_initial'], '.1%')} / {_num(ce['fall_during_rl'], '.1%')}"
    )
    table.add_row("held-out pass@1", f"{_num(pass1['after_warmup'])} → {_num(pass1['final'])}")
    table.add_row(
        "train reward (first → last 10 steps)",
        f"{summary['train_reward']['first_steps']:.3f} → {summary['train_reward']['last_steps']:.3f}",
    )
    table.add_row(
        "steps (warm-up + RL), wall time",
        f"{summary['warmup_steps']} + {summary['rl_steps']}, {summary['wall_s']:.0f} s",
    )
    console.print(table)
    console.print(f"run directory: {run_dir}  (summary.json, metrics.jsonl, plots/, checkpoints/, ledger/)")


def _num(value: float | None, spec: str = ".3f") -> str:
    """A figure, or a dash for one the run never measured."""
    return "–" if value is None else format(value, spec)


def _ablate(cfg: Any, seeds: int, lambdas: str | None) -> None:
    """The λ sweep: its runs (or those finished before), a table per λ, a result file and a plot."""
    from orchestrator import ablation
    from orchestrator.provenance import machine, result_record
    from orchestrator.sweep_plot import plot_sweep

    chosen = ablation.parse_lambdas(lambdas) if lambdas is not None else ablation.default_lambdas(cfg)
    base = ablation.sweep_base(cfg, say_whole)
    arms = ablation.plan(base, chosen, list(range(seeds)))
    load_at_start = machine()["load_avg_1_5_15_min"]

    def reporter(arm: ablation.Arm) -> Any:
        def report(kind: str, values: dict[str, Any]) -> None:
            if kind.startswith("eval"):
                parts = [f"{k} {v:.3f}" for k, v in values.items() if k.endswith(("env_ce", "pass1"))]
                console.print(f"[dim]{arm.name} step {values['step']:>4}[/]  " + "  ".join(parts))

        return report

    try:
        rows = asyncio.run(_until_terminated(ablation.run_sweep(arms, reporter, say_whole)))
    except (KeyboardInterrupt, asyncio.CancelledError):
        say_whole(
            "[yellow]sweep interrupted[/]: the same command continues it (finished runs are read back, "
            "the interrupted one starts over)"
        )
        raise typer.Exit(INTERRUPTED) from None
    by_lambda = ablation.per_lambda(rows)
    _print_sweep(by_lambda, seeds)
    stem = cfg.run.dir / f"{cfg.run.name}-lambda-sweep"
    results = {"lambdas": chosen, "seeds": seeds, "load_avg_at_start": load_at_start, "per_lambda": by_lambda}
    record = result_record("lambda_sweep", base.model_dump(mode="json"), results | {"rows": rows})
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    plot = plot_sweep(rows, stem.with_suffix(".png"))
    say_whole(f"wrote {stem.with_suffix('.json')} (every run's row, the config, commit and host load) and {plot}")


def _print_sweep(by_lambda: list[dict[str, Any]], seeds: int) -> None:
    from rich.table import Table

    from orchestrator.ablation import label

    table = Table(
        "λ",
        "RL steps",
        "train reward (last 10 steps)",
        "held-out pass@1",
        "solved / played (± s.e.)",
        "vs λ = 0: +gained −lost (sign test p)",
        "held-out env CE after warm-up",
        "held-out env CE at the end",
        title=f"ECHO λ sweep over {seeds} seed(s): mean, and min–max below it",
    )
    for entry in by_lambda:
        episodes, versus = entry["heldout_episodes"], entry.get("against_lambda0")
        stderr = "" if episodes["stderr"] is None else f" (± {episodes['stderr']:.3f})"
        table.add_row(
            label(entry["lambda"]),
            _spread(entry["rl_steps"], ".0f"),
            _spread(entry["train_reward"]),
            _spread(entry["heldout_pass1"]),
            f"{episodes['solved']} / {episodes['played']}{stderr}",
            "–" if versus is None else f"+{versus['gained']} −{versus['lost']} (p {versus['sign_test_p']:.2f})",
            _spread(entry["heldout_env_ce_after_warmup"]),
            _spread(entry["heldout_env_ce"]),
        )
    console.print(table)


def _spread(figure: dict[str, float] | None, spec: str = ".3f") -> str:
    """The mean, and min–max on a line below it (none if they agree); a dash for a figure no run measured."""
    if figure is None:
        return "–"
    low, high = format(figure["min"], spec), format(figure["max"], spec)
    return format(figure["mean"], spec) + ("" if low == high else f"\n{low}–{high}")
