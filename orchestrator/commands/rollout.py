"""`hillclimb rollout`: evaluation only — run the configured splits, print pass@k per split."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from orchestrator.console import console, reports_errors

if TYPE_CHECKING:
    from hillclimb.config.run import RunConfig, RunSection
    from orchestrator.report import SplitReport

ConfigArg = Annotated[Path, typer.Argument(help="Run config (YAML).", exists=True, dir_okay=False)]
SetOption = Annotated[
    list[str] | None, typer.Option("--set", help="Override a config key: --set rollout.group_size=8 (repeatable).")
]
AddressOption = Annotated[
    str | None, typer.Option("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray).")
]
SkillOption = Annotated[
    Path | None,
    typer.Option(
        "--skill",
        help="A skill document (Markdown, e.g. `hillclimb optimize`'s best_skill.md) for the agent's system message.",
    ),
]
DryRunOption = Annotated[bool, typer.Option("--dry-run", help="Print the resolved config as JSON and exit.")]
MetricsPortOption = Annotated[
    int | None,
    typer.Option(help="Serve the run's Prometheus /metrics (driver and every worker) on this port (0: any free one)."),
]


def resolved_config(  # type: ignore[no-untyped-def]
    config: Path, set_: list[str] | None, address: str | None, metrics_port: int | None, skill: Path | None = None
):
    """The run config with the command line's overrides on top (`--set`, `--address`,
    `--metrics-port`, `--skill`)."""
    from hillclimb.config import load_config

    overrides = list(set_ or [])
    if address:
        overrides.append(f"ray.address={address}")
    if metrics_port is not None:
        overrides.append(f"run.metrics_port={metrics_port}")
    return skilled(load_config(config, overrides), skill)


def skilled(cfg, skill: Path | None):  # type: ignore[no-untyped-def]
    """`cfg` with the skill file's text as `rollout.skill` (unchanged without `--skill`)."""
    if skill is None:
        return cfg
    from hillclimb.skill import read_skill, with_skill

    return with_skill(cfg, read_skill(skill))


def say_whole(line: str) -> None:
    """A line that holds a path: never folded, so that it can be copied."""
    console.print(line, soft_wrap=True)


def serve_run_metrics(run: RunSection) -> None:
    """Start the run's /metrics (unless `run.metrics_port` is null) and say where it is."""
    if run.metrics_port is not None:
        from hillclimb.errors import ConfigError
        from orchestrator.metrics_hub import serve_metrics

        try:
            url = serve_metrics(run.metrics_port, run.metrics_host)
        except OSError as e:
            raise ConfigError(
                f"run.metrics_port: cannot serve /metrics on {run.metrics_host}:{run.metrics_port} "
                f"({e.strerror or e}): give another --metrics-port, 0 for any free one, or "
                "--set run.metrics_port=null for none"
            ) from None
        console.print(f"metrics: {url}")


@reports_errors
def rollout(
    config: ConfigArg,
    set_: SetOption = None,
    address: AddressOption = None,
    dry_run: DryRunOption = False,
    metrics_port: MetricsPortOption = None,
) -> None:
    """Run every task of the evaluation splits G times with the configured policy; print pass@k per split."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from orchestrator.evaluate import evaluate, plan_evaluation
    from orchestrator.ledger_location import ledger_location
    from orchestrator.run_lifecycle import run_directory

    cfg = resolved_config(config, set_, address, metrics_port)
    if dry_run:
        console.print_json(json.dumps(cfg.model_dump(mode="json")))
        return
    serve_run_metrics(cfg.run)
    with run_directory(cfg, "rollout", say_whole) as run_dir:
        plan = plan_evaluation(cfg, run_dir)
        if plan.resumed_episodes:
            location = ledger_location(run_dir, cfg.run.ledger_uri)
            say_whole(f"resumed {plan.resumed_episodes} episodes from {location}")
        columns = (
            TextColumn("[bold]rollout"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("episodes"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console, transient=False) as progress:
            bar = progress.add_task("episodes", total=plan.todo_episodes)  # this invocation's episodes only
            reports = asyncio.run(evaluate(cfg, plan, lambda n: progress.advance(bar, n)))
        print_reports(cfg, reports, run_dir)


def print_reports(cfg: RunConfig, reports: list[SplitReport], run_dir: Path) -> None:
    """The pass@k table per split; the same figures go to `<run dir>/eval.json`."""
    from rich.table import Table

    from orchestrator.ledger_location import ledger_location

    ks = cfg.eval.k
    table = Table(
        "split",
        "tasks",
        "episodes",
        *(f"pass@{k}" for k in ks),
        "mean reward",
        "done reasons",
        title=f"{cfg.env.name} · {cfg.policy.type} policy",
    )
    for r in reports:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(r.done_reasons.items()))
        table.add_row(
            r.split,
            str(r.tasks),
            str(r.episodes),
            *(f"{r.pass_at[k]:.3f}" for k in ks),
            f"{r.mean_reward:.3f}",
            reasons,
        )
    console.print(table)
    (run_dir / "eval.json").write_text(json.dumps([r.model_dump() for r in reports], indent=2) + "\n")
    say_whole(f"trajectories: {ledger_location(run_dir, cfg.run.ledger_uri)}")
