"""`hillclimb sandbox`: check a provider's isolation."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated, Any

import typer

from orchestrator.console import console, reports_errors

if TYPE_CHECKING:
    from providers.contract import SandboxProvider

app = typer.Typer(help="Start, inspect and clean up sandboxes.", no_args_is_help=True)


@app.command()
@reports_errors
def probe(
    provider: Annotated[str, typer.Option("--provider", "-p", help="Sandbox provider to check.")] = "local",
    unisolated: Annotated[
        bool, typer.Option("--unisolated", help="Local provider without isolation (the checks will fail).")
    ] = False,
    option: OptionsOption = None,
) -> None:
    """Start a sandbox, report from inside it (network, routes, host loopback, user, limits), destroy it.

    Exits non-zero if any check fails.
    """
    from providers.probe import probe as run_probe

    async def run():  # type: ignore[no-untyped-def]
        prov = _provider(provider, option, **({"isolation": "none"} if unisolated else {}))
        try:
            return await run_probe(prov)
        finally:
            await prov.close()

    result = asyncio.run(run())
    for check in result.checks:
        mark = "[green]PASS[/]" if check.ok else "[bold red]FAIL[/]"
        console.print(f"{mark}  {check.name:<38} {check.detail}")
    console.print(
        f"sandbox {result.sandbox_id} on [bold]{result.provider}[/]: {'isolated' if result.ok else 'NOT ISOLATED'}"
    )
    raise typer.Exit(0 if result.ok else 1)


ProviderOption = Annotated[str, typer.Option("--provider", "-p", help="Sandbox provider.")]
RunOption = Annotated[str | None, typer.Option("--run-id", help="Only sandboxes of this run.")]
OptionsOption = Annotated[
    list[str] | None,
    typer.Option(
        "--option", "-o", help="A provider option as KEY=VALUE, checked like a run config's (e.g. -o namespace=agents)."
    ),
]


def _provider(name: str, options: list[str] | None, **fixed: Any) -> SandboxProvider:
    """The provider `name` with its options from the command line, checked against its model."""
    from pydantic import ValidationError

    from hillclimb.errors import ConfigError, validation_problems
    from providers.registry import make_provider

    given: dict[str, Any] = {}
    for item in options or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"--option {item!r}: expected KEY=VALUE")
        given[key] = value
    try:
        return make_provider(name, **{**given, **fixed})
    except ValidationError as e:
        raise ConfigError(f"bad option for provider {name!r}: {validation_problems(e)}") from None


def _selector(run_id: str | None) -> dict[str, str]:
    from providers.contract import LABEL_RUN

    return {LABEL_RUN: run_id} if run_id else {}


@app.command("ls")
@reports_errors
def list_sandboxes(provider: ProviderOption = "local", run_id: RunOption = None, option: OptionsOption = None) -> None:
    """List sandboxes with their run, environment, age and time left."""
    import time

    from rich.table import Column, Table

    from providers.contract import LABEL_ENV, LABEL_OWNER

    sandboxes = asyncio.run(_provider(provider, option).list(_selector(run_id)))
    # Ids are what `sandbox rm` takes: never cut or folded, whatever the terminal's width.
    id_column = Column("id", no_wrap=True, min_width=max((len(sb.id) for sb in sandboxes), default=2))
    table = Table(id_column, "run", "owner", "env", "age", "expires in", "endpoint", "transport")
    now = time.time()
    for sb in sandboxes:
        left = f"{sb.expires_at - now:.0f} s" if sb.expires_at else "-"
        table.add_row(
            sb.id,
            sb.run_id or "-",
            sb.labels.get(LABEL_OWNER, "-"),
            sb.labels.get(LABEL_ENV, "-"),
            f"{now - sb.created_at.timestamp():.0f} s",
            left,
            sb.endpoint,
            sb.transport,
        )
    console.print(table)
    console.print(f"{len(sandboxes)} sandbox(es) on {provider}")


@app.command("rm")
@reports_errors
def remove(
    ids: Annotated[list[str] | None, typer.Argument(help="Sandbox ids to destroy.")] = None,
    provider: ProviderOption = "local",
    run_id: RunOption = None,
    option: OptionsOption = None,
) -> None:
    """Destroy sandboxes by id, or every sandbox of a run."""
    from hillclimb.provider_errors import SandboxNotFound

    if not ids and not run_id:
        raise typer.BadParameter("name sandbox ids or --run-id")

    async def run() -> list[str]:
        prov = _provider(provider, option)
        existing = {sb.id for sb in await prov.list()}
        unknown = [sandbox_id for sandbox_id in ids or [] if sandbox_id not in existing]
        if unknown:  # destroy() is a no-op on them: saying "destroyed" would hide a typo
            raise SandboxNotFound(
                f"no sandbox {', '.join(unknown)} on provider {provider!r}; "
                f"`hillclimb sandbox ls --provider {provider}` lists the ones there are",
                ids=unknown,
            )
        targets = list(ids or [])
        if run_id:
            targets += [sb.id for sb in await prov.list(_selector(run_id))]
        for sandbox_id in targets:
            await prov.destroy(sandbox_id)
        return targets

    for sandbox_id in asyncio.run(run()):
        console.print(f"destroyed {sandbox_id}")


@app.command()
@reports_errors
def reap(
    provider: ProviderOption = "local",
    run_id: RunOption = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would be destroyed and why; destroy nothing.")
    ] = False,
    option: OptionsOption = None,
) -> None:
    """Destroy sandboxes past their time-to-live or whose run is gone (its driver died).

    Each is named with why: how long past its time-to-live, its run and that run's liveness, its age.
    """
    from orchestrator.reaper import reap as run_reap

    report = asyncio.run(run_reap(_provider(provider, option), selector=_selector(run_id), dry_run=dry_run))
    verb = "would destroy" if dry_run else "destroyed"
    for doomed in report.doomed:
        if doomed.id in report.failed:
            console.print(f"[red]failed[/] {doomed.id} ({doomed.why()}): {report.failed[doomed.id]}")
        else:
            console.print(f"{verb} {doomed.id} ({doomed.why()})")
    console.print(f"examined {report.examined}, {verb} {report.destroyed}, kept {report.examined - len(report.doomed)}")
    raise typer.Exit(1 if report.failed else 0)
