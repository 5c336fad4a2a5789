"""`hillclimb optimize ENV -m MODEL --proposer P --iterations K --out DIR`: learn a skill document
with the model's weights frozen, keeping an edit only when it strictly improves validation.
What it writes is in orchestrator/optimize/__init__.py and docs/optimize.md."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from orchestrator.commands.rollout import AddressOption, SetOption
from orchestrator.console import console, errors, reports_errors

PROPOSERS = ("builtin", "examples", "demos", "rules", "prune", "llm")
INTERRUPTED = 130
T = TypeVar("T")


@reports_errors
def optimize(
    env: Annotated[str, typer.Argument(help="Environment name (one with a task suite).")],
    out: Annotated[Path, typer.Option("--out", help="Output directory (rerun with it to resume).")],
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="The agent: a model name the chat API serves.")
    ] = None,
    proposer: Annotated[
        str,
        typer.Option(
            "--proposer", help=f"Who edits the skill: {', '.join(PROPOSERS)} (builtin: the next four in turn)."
        ),
    ] = "builtin",
    iterations: Annotated[int, typer.Option("--iterations", "-k", min=1, help="Candidates to propose.")] = 10,
    skill: Annotated[Path | None, typer.Option("--skill", help="Starting skill (Markdown; default: empty).")] = None,
    base_url: Annotated[
        str | None, typer.Option("--base-url", help="The agent's chat API root, up to /v1 (default: $OPENAI_BASE_URL).")
    ] = None,
    api_key_env: Annotated[
        str | None, typer.Option("--api-key-env", help="Variable holding the agent API's key ('' for none).")
    ] = None,
    proposer_model: Annotated[str | None, typer.Option("--proposer-model", help="llm: the proposer's model.")] = None,
    proposer_base_url: Annotated[
        str | None, typer.Option("--proposer-base-url", help="llm: its chat API root (default: the agent's).")
    ] = None,
    proposer_api_key_env: Annotated[
        str | None, typer.Option("--proposer-api-key-env", help="llm: variable holding its key (default: the agent's).")
    ] = None,
    rollouts: Annotated[int, typer.Option("--rollouts", "-r", min=1, help="Episodes per task.")] = 2,
    train_tasks: Annotated[int, typer.Option("--train-tasks", min=1, help="Train tasks played per iteration.")] = 8,
    validation_tasks: Annotated[
        int, typer.Option("--validation-tasks", min=1, help="Train-split tasks set aside to decide acceptance.")
    ] = 16,
    test_tasks: Annotated[
        int | None, typer.Option("--test-tasks", min=1, help="Held-out tasks for the final report (default: all).")
    ] = None,
    min_gain: Annotated[
        float, typer.Option("--min-gain", help="Accept when paired validation reward rises by at least this (> 0).")
    ] = 1.0,
    bootstrap: Annotated[
        float | None,
        typer.Option("--bootstrap", help="Also require a paired bootstrap bound > 0 at this confidence (e.g. 0.9)."),
    ] = None,
    max_skill_chars: Annotated[
        int, typer.Option("--max-skill-chars", min=1, help="Longer proposals are rejected unplayed.")
    ] = 4000,
    seed: Annotated[int, typer.Option("--seed", help="Seeds the splits, episodes, proposers and bootstrap.")] = 0,
    models: Annotated[
        str | None,
        typer.Option("--models", help="Instead: compare models (A,B@URL,C) on validation with the skill; choose one."),
    ] = None,
    price: Annotated[
        list[str] | None, typer.Option("--price", help="With --models: MODEL=IN/OUT dollars per million tokens.")
    ] = None,
    tolerance: Annotated[
        float, typer.Option("--tolerance", min=0, help="With --models: mean reward a cheaper model may give up.")
    ] = 0.0,
    set_: SetOption = None,
    address: AddressOption = None,
) -> None:
    """Learn a skill document for an agent behind a chat API, weights frozen; only held-out gains are kept."""
    from envs.authoring.registry import load_suite
    from hillclimb.config import load_config
    from hillclimb.errors import ConfigError, HillclimbError
    from hillclimb.skill import read_skill, with_skill
    from orchestrator.chat_eval import eval_overrides
    from orchestrator.commands.eval import check_policy
    from orchestrator.optimize.acceptance import AcceptanceRule
    from orchestrator.optimize.loop import LoopSettings
    from orchestrator.optimize.run import OptimizeJob
    from orchestrator.optimize.uses import split_uses

    if proposer not in PROPOSERS:
        raise ConfigError(f"--proposer {proposer!r}: choose one of {', '.join(PROPOSERS)}")
    try:
        rule = AcceptanceRule(min_gain=min_gain, bootstrap_confidence=bootstrap)
    except ValueError as e:
        raise ConfigError(f"acceptance rule: {e}") from None
    initial = "" if skill is None else read_skill(skill)

    def agent_config(name: str, url: str | None):  # type: ignore[no-untyped-def]
        overrides = eval_overrides(env, name, rollouts=rollouts, base_url=url, api_key_env=api_key_env, splits=[])
        overrides += list(set_ or [])
        if address:
            overrides.append(f"ray.address={address}")
        return with_skill(load_config(None, overrides), None)

    uses = split_uses(load_suite(env), seed=seed, validation_tasks=validation_tasks, test_tasks=test_tasks)
    if models is not None:
        _compare(models, list(price or []), tolerance, agent_config, base_url, initial, uses, out, env, seed, rollouts)
        return
    if model is None:
        raise ConfigError("name the agent's model with -m MODEL (or compare several with --models A,B)")
    cfg = agent_config(model, base_url)
    rule.check_decidable(len(uses.validation), rollouts)
    settings = LoopSettings(env, seed, rollouts, iterations, train_tasks, max_skill_chars)
    job = OptimizeJob(cfg, out, initial, uses, rule, settings)
    chosen = _proposer(proposer, cfg, proposer_model, proposer_base_url, proposer_api_key_env)
    asyncio.run(check_policy(cfg))
    console.print(f"{env}: {uses.sizes()}; {rule.describe()}", soft_wrap=True)
    try:
        report = asyncio.run(_optimize(job, chosen))
    except KeyboardInterrupt:
        console.print(f"stopped; {out} keeps every finished evaluation: rerun the same command to resume")
        raise typer.Exit(INTERRUPTED) from None
    except HillclimbError as e:  # an API down after its retries, episodes lost to the sandbox: stop, resumable
        errors.print(f"[bold red]error:[/] {type(e).__name__}: {e}", soft_wrap=True)
        errors.print(f"{out} keeps every finished evaluation: rerun the same command to resume", soft_wrap=True)
        raise typer.Exit(2) from None
    _print_report(report, out)


async def _optimize(job: Any, proposer: Any) -> dict[str, Any]:
    from orchestrator.optimize.run import run_optimization

    try:
        return await _with_progress(
            lambda progress: run_optimization(job, proposer, progress=progress, say=console.print)
        )
    finally:
        if hasattr(proposer, "aclose"):
            await proposer.aclose()


async def _with_progress(work: Callable[[Any], Awaitable[T]]) -> T:
    """`work(progress)` under progress bars: `progress(label, episodes)` opens one, returning its advance."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bars:

        def progress(label: str, total: int) -> Any:
            bar = bars.add_task(label, total=total)
            return lambda n: bars.advance(bar, n)

        return await work(progress)


def _compare(  # type: ignore[no-untyped-def]
    models, prices, tolerance, agent_config, base_url, skill, uses, out, env, seed, rollouts
) -> None:
    """`--models`: every model on the validation episodes with the skill; models.json and a table."""
    from orchestrator.commands.eval import check_policy
    from orchestrator.optimize.models import compare_models, parse_models, parse_prices
    from orchestrator.optimize.uses import groups

    choices = parse_models(models)
    priced = parse_prices(prices)
    configs = {c: agent_config(c.model, c.base_url or base_url) for c in choices}
    for config in configs.values():
        asyncio.run(check_policy(config))
    validation = groups(uses.validation, "validation", env=env, seed=seed, rollouts=rollouts)
    out.mkdir(parents=True, exist_ok=True)
    result = asyncio.run(
        _with_progress(
            lambda progress: compare_models(
                choices, configs.__getitem__, skill, validation, out, priced, tolerance, progress
            )
        )
    )
    (out / "models.json").write_text(json.dumps(result, indent=2) + "\n")
    from rich.table import Table

    table = Table(title=f"chosen: {result['chosen']}")
    for column in ("model", "mean reward", "pass@1", "episodes", "tokens (prompt+completion)", "$", "agent s/episode"):
        table.add_column(column)
    for r in result["rows"]:
        usd = "-" if r["usd"] is None else f"{r['usd']:.4f}"
        tokens = f"{r['prompt_tokens']}+{r['completion_tokens']}"
        cells = (r["model"], f"{r['mean_reward']:.3f}", f"{r['pass1']:.3f}", str(r["episodes"]), tokens, usd)
        table.add_row(*cells, f"{r['agent_s_per_episode']:.2f}")
    console.print(table)
    console.print(f"rule: {result['rule']}", soft_wrap=True)
    console.print(f"models.json: {out / 'models.json'}", soft_wrap=True)


def _proposer(name: str, cfg: Any, model: str | None, base_url: str | None, api_key_env: str | None) -> Any:
    """A built-in proposer, or `llm`: a chat policy of its own (the agent's endpoint and key unless
    given others)."""
    from hillclimb.errors import ConfigError
    from orchestrator.optimize.proposers import builtin_proposer

    if name != "llm":
        return builtin_proposer(name)
    if model is None:
        raise ConfigError("--proposer llm needs --proposer-model, the chat model that edits the skill")
    from hillclimb.config.policy import ChatPolicyConfig
    from orchestrator.optimize.llm_proposer import LLMProposer
    from trainers.policy.factory import make_policy

    agent = cfg.policy
    config = ChatPolicyConfig(
        base_url=base_url or agent.base_url,
        model=model,
        api_key_env=agent.api_key_env if api_key_env is None else (api_key_env or None),
        timeout_s=max(agent.timeout_s, 300.0),  # a whole skill is a long reply
        max_retries=agent.max_retries,
        backoff_s=agent.backoff_s,
    )
    return LLMProposer(make_policy(config))


def _print_report(report: dict[str, Any], out: Path) -> None:
    from rich.table import Table

    table = Table(title=f"{report['accepted']} of {report['candidates']} candidates accepted")
    for column in ("skill", "chars", "validation reward", "test pass@1", "test episodes"):
        table.add_column(column)
    for name in ("initial", "best"):
        s = report[name]
        validation = "-" if s["validation_mean_reward"] is None else f"{s['validation_mean_reward']:.3f}"
        table.add_row(name, str(s["chars"]), validation, f"{s['test_pass1']:.3f}", str(s["test_episodes"]))
    console.print(table)
    for name in ("best_skill.md", "history.jsonl", "report.json", "validation.png"):
        console.print(f"{name}: {out / name}", soft_wrap=True)
