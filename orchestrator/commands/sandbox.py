"""`hillclimb sandbox`: check a provider's isolation."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from orchestrator.console import console, reports_errors

app = typer.Typer(help="Start, inspect and clean up sandboxes.", no_args_is_help=True)


@app.command()
@reports_errors
def probe(
    provider: Annotated[str, typer.Option(help="Sandbox provider to check.")] = "local",
    unisolated: Annotated[bool, typer.Option("--unisolated", help="Local provider without isolation (the checks will fail).")] = False,
) -> None:
    """Start a sandbox, report from inside it (network, routes, host loopback, user, limits), destroy it.

    Exits non-zero if any check fails.
    """
    from providers.probe import probe as run_probe
    from providers.registry import open_provider

    async def run():  # type: ignore[no-untyped-def]
        async with open_provider(provider, **({"isolation": "none"} if unisolated else {})) as prov:
            return await run_probe(prov)

    result = asyncio.run(run())
    for check in result.checks:
        mark = "[green]PASS[/]" if check.ok else "[bold red]FAIL[/]"
        console.print(f"{mark}  {check.name:<38} {check.detail}")
    console.print(f"sandbox {result.sandbox_id} on [bold]{result.provider}[/]: {'isolated' if result.ok else 'NOT ISOLATED'}")
    raise typer.Exit(0 if result.ok else 1)
