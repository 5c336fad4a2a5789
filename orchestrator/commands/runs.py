"""`hillclimb runs ls` and `hillclimb runs show RUN [--episode N]`: what a run did, read from its directory.

runs ls                       one line per run under --root: kind, env, progress, result, state
runs show RUN                 config highlights, summary.json / eval.json figures, its episodes
runs show RUN --episode N     episode N as text, each token role in its own colour
                              (`--plain`, or output that is not a terminal: <ROLE>…</ROLE> tags)
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from orchestrator.console import console, reports_errors

if TYPE_CHECKING:
    from orchestrator.ledger import EpisodeEntry
    from trainers.trajectory import Trajectory

app = typer.Typer(help="Runs on disk: list them, show one and its episodes.", no_args_is_help=True)

RootOption = Annotated[Path, typer.Option("--root", help="The runs directory (the configs' run.dir).")]


@app.command("ls")
@reports_errors
def ls(root: RootOption = Path("runs")) -> None:
    """One line per run under --root, oldest first."""
    from rich.table import Table

    from orchestrator.run_dirs import find_runs, run_info

    runs = [run_info(path) for path in find_runs(root)]
    if not runs:
        console.print(f"no runs under {root}")
        return
    # 80 columns hold a run's name whole: the env, the one column allowed to shrink, gives way first
    table = Table(box=None, pad_edge=False, padding=(0, 1, 0, 0), header_style="bold")
    table.add_column("run", no_wrap=True, min_width=min(max(len(r.name) for r in runs), 28), overflow="ellipsis")
    table.add_column("kind", no_wrap=True)
    table.add_column("env", overflow="ellipsis")
    for header in ("progress", "result", "started", "state"):
        table.add_column(header, no_wrap=True)
    for r in runs:
        table.add_row(r.name, r.kind, r.env, r.progress, r.result, _age(r.started), r.state)
    console.print(table)


def _age(started: datetime) -> str:
    """How long ago, in its largest unit: `45s ago`, `12m ago`, `3h ago`, `2d ago` (narrow, for 80 columns)."""
    seconds = max(0, int((datetime.now() - started).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


@app.command("show")
@reports_errors
def show(
    run: Annotated[str, typer.Argument(help="A run's name under --root, or the path of its directory.")],
    episode: Annotated[
        int | None, typer.Option("--episode", help="Print this episode (its # in the table) as text.", min=0)
    ] = None,
    group: Annotated[str | None, typer.Option("--group", help="Only episodes whose group id starts with this.")] = None,
    split: Annotated[str | None, typer.Option("--split", help="Only episodes of this split (train, heldout).")] = None,
    plain: Annotated[bool, typer.Option("--plain", help="Role tags instead of colours.")] = False,
    root: RootOption = Path("runs"),
) -> None:
    """A run's summary and episodes; with --episode N, that episode as text, its token roles coloured."""
    from orchestrator.run_dirs import read_json, resolve_run, run_ledger

    run_dir = resolve_run(run, root)
    config = read_json(run_dir / "config.json")
    ledger = run_ledger(run_dir, config)
    entries = [  # the listing's columns only: an episode's tokens are read when it is shown
        e
        for e in (ledger.entries() if ledger is not None else [])
        if (group is None or e.group_id.startswith(group)) and (split is None or e.split == split)
    ]
    if episode is None:
        _print_summary(run_dir, config, entries)
    else:
        _check_listed(entries, episode)
        assert ledger is not None  # an episode is listed: the ledger exists
        _print_episode(ledger.read_episode(entries[episode]), episode, config, plain=plain or not console.is_terminal)


def _print_summary(run_dir: Path, config: dict[str, Any], episodes: list[EpisodeEntry]) -> None:
    from rich.table import Table
    from rich.text import Text

    from orchestrator.run_dirs import read_json, run_info, run_ledger_location

    info = run_info(run_dir)
    console.print(f"[bold]{info.name}[/]  {info.kind}, {info.state}, started {info.started:%Y-%m-%d %H:%M}  {run_dir}")
    if info.error is not None:
        console.print(Text.assemble(("failed: ", "red"), info.error), soft_wrap=True)
    console.print("config: " + "  ".join(f"{k} {v}" for k, v in _highlights(config, info.kind).items()))
    console.print(f"ledger: {run_ledger_location(run_dir, config)}")
    summary = read_json(run_dir / "summary.json")
    if summary is not None:
        figures = Table("figure", "value", title="summary.json")
        for key, value in _flatten(summary).items():
            figures.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
        console.print(figures)
    reports = read_json(run_dir / "eval.json")
    if reports:
        ks = sorted(reports[0]["pass_at"], key=int)
        splits = Table("split", "tasks", "episodes", *(f"pass@{k}" for k in ks), "mean reward", title="eval.json")
        for r in reports:
            pass_at = (f"{r['pass_at'][k]:.3f}" for k in ks)
            splits.add_row(r["split"], str(r["tasks"]), str(r["episodes"]), *pass_at, f"{r['mean_reward']:.3f}")
        console.print(splits)
    table = Table("#", "task", "split", "reward", "done", "turns", "group", title=f"{len(episodes)} episodes")
    for index, t in enumerate(episodes):
        table.add_row(str(index), t.task_id, t.split, f"{t.reward:g}", t.done_reason.value, str(t.turns), t.group_id)
    console.print(table)
    console.print(f"one episode as text: hillclimb runs show {run_dir} --episode N (N as listed, same filters)")


def _highlights(config: dict[str, Any], kind: str) -> dict[str, Any]:
    policy = config["policy"]
    model = policy.get("model")
    model_name = model.get("name_or_path", model.get("type")) if isinstance(model, dict) else model
    highlights = {
        "env": config["env"]["name"],
        "policy": policy["type"] + (f" ({model_name})" if model_name else ""),
        "provider": config["provider"]["type"],
        "group_size": config["rollout"]["group_size"],
        "seed": config["run"]["seed"],
    }
    if kind == "train":
        highlights |= {"warmup_steps": config["train"]["warmup_steps"], "steps": config["train"]["steps"]}
    return highlights


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _check_listed(entries: list[EpisodeEntry], index: int) -> None:
    from hillclimb.errors import ConfigError

    if index >= len(entries):
        raise ConfigError(
            f"--episode {index}: {len(entries)} episodes match (#0 to #{len(entries) - 1}); "
            "list them with `hillclimb runs show RUN` and the same --group/--split"
        )


def _print_episode(t: Trajectory, index: int, config: dict[str, Any], *, plain: bool) -> None:
    from orchestrator.episode_text import coloured_text, legend, role_segments, tagged_text
    from orchestrator.run_dirs import run_tokenizer

    segments = role_segments(t.token_ids, t.roles, run_tokenizer(config))
    header = (
        f"episode {index}: task {t.task_id} ({t.split}), reward {t.reward:g}, {t.done_reason.value}, "
        f"{t.turns} turns, group {t.group_id} sample {t.sample_index}, policy version {t.policy_version}"
    )
    if plain:
        console.out(header + "\n" + tagged_text(segments), highlight=False)
        return
    console.print(header, markup=False, soft_wrap=True)
    console.print(legend())
    console.print(coloured_text(segments), soft_wrap=True)  # the terminal wraps: the text stays as decoded
