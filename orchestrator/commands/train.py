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
    resolved_config,
    say_whole,
    serve_run_metrics,
)
from orchestrator.console import console, reports_errors

T = TypeVar("T")
INTERRUPTED = 130  # the shell's status for a run stopped by SIGINT

AblationOption = Annotated[
    int, typer.Option("--ablation", help="Instead: run ECHO on and off (λ = 0) over this many seeds; print a table.")
]


@reports_errors
def train(
    config: ConfigArg,
    set_: SetOption = None,
    address: AddressOption = None,
    dry_run: DryRunOption = False,
    metrics_port: MetricsPortOption = None,
    ablation: AblationOption = 0,
) -> None:
    """Train: sandboxed rollouts, GRPO + ECHO learners, held-out evaluation; writes a run directory."""
    from rich.progress import Progress

    from orchestrator.run_lifecycle import run_directory
    from orchestrator.train import Trainer, check_trainable
    from orchestrator.train_display import TrainDisplay

    cfg = resolved_config(config, set_, address, metrics_port)
    if dry_run:
        console.print_json(json.dumps(cfg.model_dump(mode="json")))
        return
    check_trainable(cfg)  # before the run directory, or an earlier run's, is touched
    if ablation:
        _ablate(cfg, ablation)
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


def _ablate(cfg: Any, seeds: int) -> None:
    from rich.table import Table

    from orchestrator.ablation import averages, run_ablation

    def reporter(arm: str, seed: int) -> Any:
        def report(kind: str, values: dict[str, Any]) -> None:
            if kind.startswith("eval"):
                parts = [f"{k} {v:.3f}" for k, v in values.items() if k.endswith(("env_ce", "pass1"))]
                console.print(f"[dim]{arm} seed {seed} step {values['step']:>4}[/]  " + "  ".join(parts))

        return report

    rows = asyncio.run(run_ablation(cfg, list(range(seeds)), reporter))
    table = Table(
        "arm",
        "seed",
        "RL steps",
        "train reward (last 10 steps)",
        "held-out pass@1",
        "held-out env-token CE",
        title="ECHO ablation",
    )
    for r in rows:
        table.add_row(
            r["arm"],
            str(r["seed"]),
            str(r["rl_steps"]),
            f"{r['train_reward']:.3f}",
            f"{r['heldout_pass1']:.3f}",
            f"{r['heldout_env_ce']:.3f}",
        )
    for arm, mean in averages(rows).items():
        table.add_row(
            f"[bold]{arm}[/]",
            "mean",
            f"{mean['rl_steps']:.1f}",
            f"{mean['train_reward']:.3f}",
            f"{mean['heldout_pass1']:.3f}",
            f"{mean['heldout_env_ce']:.3f}",
        )
    console.print(table)
    out = cfg.run.dir / f"{cfg.run.name}-ablation.json"
    out.write_text(json.dumps({"rows": rows, "means": averages(rows)}, indent=2) + "\n")
    console.print(f"wrote {out}")
