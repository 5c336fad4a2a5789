"""`hillclimb eval ENV -m MODEL`: a model behind any OpenAI-compatible chat API on an environment's
tasks; pass@k per split, every episode's text in `<run dir>/episodes.jsonl`."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer

from orchestrator.commands.rollout import AddressOption, SetOption, SkillOption, print_reports
from orchestrator.console import console, reports_errors


@reports_errors
def eval_model(
    env: Annotated[str, typer.Argument(help="Environment name (one with a task suite).")],
    model: Annotated[str, typer.Option("--model", "-m", help="Model name the chat API serves.")],
    tasks: Annotated[int | None, typer.Option("--tasks", "-n", min=1, help="Tasks per split (default: all).")] = None,
    rollouts: Annotated[int, typer.Option("--rollouts", "-r", min=1, help="Rollouts per task; pass@k for k ≤ r.")] = 3,
    base_url: Annotated[
        str | None,
        typer.Option("--base-url", help="Chat API root, up to /v1 (default: $OPENAI_BASE_URL, else OpenAI's)."),
    ] = None,
    api_key_env: Annotated[
        str | None,
        typer.Option(
            "--api-key-env", help="Environment variable holding the key ('' for none; default OPENAI_API_KEY)."
        ),
    ] = None,
    split: Annotated[
        list[str] | None, typer.Option("--split", help="Split to evaluate (repeatable; default: train and heldout).")
    ] = None,
    skill: SkillOption = None,
    set_: SetOption = None,
    address: AddressOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the resolved config as JSON and exit.")] = False,
) -> None:
    """Evaluate a model behind an OpenAI-compatible chat API: pass@k per split, episodes as text."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from hillclimb.config import load_config
    from hillclimb.skill import read_skill, with_skill
    from orchestrator.chat_eval import eval_overrides, first_tasks, reuse_notice, write_episodes
    from orchestrator.evaluate import evaluate, plan_evaluation
    from orchestrator.run_lifecycle import run_directory

    skill_text = None if skill is None else read_skill(skill)
    overrides = eval_overrides(
        env,
        model,
        rollouts=rollouts,
        base_url=base_url,
        api_key_env=api_key_env,
        splits=list(split or []),
        skill=skill_text,
    )
    overrides += list(set_ or [])
    if address:
        overrides.append(f"ray.address={address}")
    cfg = load_config(None, overrides)
    if skill_text is not None:
        cfg = with_skill(cfg, skill_text)
    if dry_run:
        console.print_json(json.dumps(cfg.model_dump(mode="json")))
        return
    asyncio.run(check_policy(cfg))
    with run_directory(cfg, "eval", console.print) as run_dir:
        plan = first_tasks(plan_evaluation(cfg, run_dir), tasks)
        notice = reuse_notice(plan, run_dir)
        if notice is not None:
            console.print(notice, style="yellow", markup=False, soft_wrap=True)
        columns = (
            TextColumn("[bold]eval"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("episodes"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console, transient=False) as progress:
            bar = progress.add_task("episodes", total=plan.todo_episodes)
            reports = asyncio.run(evaluate(cfg, plan, lambda n: progress.advance(bar, n)))
        print_reports(cfg, reports, run_dir)
        episodes = run_dir / "episodes.jsonl"
        write_episodes(episodes, [t for g in plan.groups for t in plan.ledger.read_group(g.group_id).trajectories])
    console.print(f"episodes: {episodes}")


async def check_policy(cfg) -> None:  # type: ignore[no-untyped-def]
    """A wrong key, model or URL fails here, in one line, before Ray or any sandbox starts."""
    from trainers.policy.chat import ChatPolicy
    from trainers.policy.factory import make_policy

    policy = make_policy(cfg.policy)
    if isinstance(policy, ChatPolicy):  # a `--set policy.type=...` may have chosen another engine
        async with policy:
            await policy.check()
