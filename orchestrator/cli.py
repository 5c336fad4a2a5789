"""The `hillclimb` command. Subcommands are thin: they parse, then call library code.

Heavy imports (Ray, torch) happen inside the commands that need them, so `--help` and
config validation stay fast.
"""

from __future__ import annotations

import typer

from orchestrator.commands import env as env_commands
from orchestrator.commands import eval as eval_commands
from orchestrator.commands import image as image_commands
from orchestrator.commands import model as model_commands
from orchestrator.commands import optimize as optimize_commands
from orchestrator.commands import rollout as rollout_commands
from orchestrator.commands import runs as runs_commands
from orchestrator.commands import sandbox as sandbox_commands
from orchestrator.commands import train as train_commands

app = typer.Typer(
    name="hillclimb",
    help="Sandboxed rollouts and GRPO + ECHO training for tool-using and terminal agents.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(env_commands.app, name="env")
app.add_typer(sandbox_commands.app, name="sandbox")
app.add_typer(image_commands.app, name="image")
app.add_typer(runs_commands.app, name="runs")
app.add_typer(model_commands.app, name="model")
app.command("rollout")(rollout_commands.rollout)
app.command("eval")(eval_commands.eval_model)
app.command("train")(train_commands.train)
app.command("optimize")(optimize_commands.optimize)


def _print_version(asked: bool) -> None:
    if asked:
        from importlib.metadata import version

        typer.echo(f"hillclimb {version('hillclimb')}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print hillclimb's version and exit."
    ),
) -> None:
    """Sandboxed rollouts and GRPO + ECHO training for tool-using and terminal agents."""
    from envs.authoring.packages import search_working_directory

    search_working_directory()  # one rule for every command: a user's package from their project directory


def main() -> None:
    app()
