"""`hillclimb env`: serve an environment, list the known ones, watch an oracle episode, scaffold a new one."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from pathlib import Path
from typing import Annotated

import typer

from hillclimb.errors import ConfigError, TargetNotFoundError
from orchestrator.console import console, errors, reports_errors

app = typer.Typer(help="Serve and inspect environments.", no_args_is_help=True)


def server_token_file(port: int, uds: Path | None) -> Path:
    """The token file of the server on `port` (or `uds`): one per server, so starting another
    never changes the token that clients of a running one hold."""
    name = uds.name if uds else str(port) if port else f"pid{os.getpid()}"  # port 0: the port is not known yet
    return Path(f".hillclimb-token-{name}")


def _token_for_serving(token_file: Path | None, port: int, uds: Path | None) -> str:
    from envs.server.serve import TOKEN_ENV_VAR, read_token

    token = read_token(str(token_file) if token_file else None)
    if token:
        return token
    path = server_token_file(port, uds)
    if path.exists():  # this server's, from an earlier start: its clients keep working
        if path.stat().st_mode & 0o077:
            raise ConfigError(f"token file {path.resolve()} is readable by others: chmod 600 it or delete it")
        errors.print(f"no --token-file or ${TOKEN_ENV_VAR}: using the bearer token in {path.resolve()}", soft_wrap=True)
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    errors.print(
        f"no --token-file or ${TOKEN_ENV_VAR}: wrote a new bearer token to {path.resolve()} (mode 0600)", soft_wrap=True
    )
    return token


@app.command()
@reports_errors
def serve(
    target: Annotated[
        str,
        typer.Argument(
            help="Built-in or installed (hillclimb.envs entry point) name, import path 'package.module:Name' "
            "(an environment class or EnvPackage), or a module calling OpenEnv's create_app."
        ),
    ],
    host: Annotated[str, typer.Option(help="TCP address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (0 picks a free one).")] = 8000,
    uds: Annotated[Path | None, typer.Option(help="Listen on this Unix socket instead of TCP.")] = None,
    no_auth: Annotated[bool, typer.Option("--no-auth", help="Accept clients without a bearer token.")] = False,
    token_file: Annotated[Path | None, typer.Option(help="File holding the bearer token.")] = None,
    max_sessions: Annotated[int, typer.Option(help="Concurrent sessions (WebSocket and HTTP).")] = 64,
    idle_timeout: Annotated[float, typer.Option(help="Close sessions idle this many seconds.")] = 300.0,
    header_timeout: Annotated[float, typer.Option(help="Close connections slower to send a request.")] = 10.0,
    max_connections: Annotated[int, typer.Option(help="Open connections at once.")] = 512,
    http_sessions: Annotated[
        str, typer.Option(help="HTTP binding: 'keyed' (Hillclimb-Session header) or 'single' (one per server).")
    ] = "keyed",
    tls_cert: Annotated[Path | None, typer.Option(help="PEM certificate chain: serve TLS (wss://) on TCP.")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM key of --tls-cert (default: in the same file).")] = None,
    action: Annotated[
        str | None, typer.Option(help="The action class 'package.module:Class', when step() has no type hint.")
    ] = None,
    observation: Annotated[str | None, typer.Option(help="The observation class 'package.module:Class'.")] = None,
) -> None:
    """Serve an environment over OpenEnv's protocol (WebSocket /ws, /health, /schema, /metadata, /mcp) and the
    HTTP session binding (/reset, /step, /state, /close)."""
    from envs.server.env_server import ServerConfig
    from envs.server.serve import TLS_NEEDS_TCP, server_tls
    from envs.server.serve import serve as run
    from envs.server.targets import runtime_for

    runtime_for(target, action=action, observation=observation)  # fail fast, before binding anything
    if tls_cert and uds:
        raise typer.BadParameter(TLS_NEEDS_TCP)
    tls = server_tls(str(tls_cert), str(tls_key) if tls_key else None) if tls_cert else None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    token = None if no_auth else _token_for_serving(token_file, port, uds)
    if no_auth:
        errors.print("[yellow]warning:[/] --no-auth: any local client can drive this environment")
    config = ServerConfig(
        max_sessions=max_sessions,
        idle_timeout_s=idle_timeout,
        header_timeout_s=header_timeout,
        max_connections=max_connections,
        http_sessions=http_sessions,
    )
    ready = lambda url: console.print(f"serving [bold]{target}[/] on {url}")  # noqa: E731
    asyncio.run(
        run(
            target,
            token=token,
            host=host,
            port=port,
            uds=str(uds) if uds else None,
            config=config,
            on_ready=ready,
            tls=tls,
            action=action,
            observation=observation,
        )
    )


@app.command("list")
def list_envs() -> None:
    """List the built-in environments and those installed packages add (hillclimb.envs entry points)."""
    from rich.table import Table
    from rich.text import Text

    from envs.authoring.registry import BUILTIN_ENVS, find_env, installed_envs

    table = Table("name", "from", "class", "task suite", "about")
    origins = {**{name: "built-in" for name in BUILTIN_ENVS}, **{n: ep.value for n, ep in installed_envs().items()}}
    for name, origin in sorted(origins.items()):
        try:
            package = find_env(name)
            about = (package.env_class().__doc__ or "").strip().partition("\n")[0]
        except TargetNotFoundError as e:  # one broken package hides none of the others
            table.add_row(name, origin, "-", "-", Text(f"does not load: {e}", style="red"))
            continue
        table.add_row(name, origin, package.env, "yes" if package.suite is not None else "-", about)
    console.print(table)


@app.command()
@reports_errors
def init(
    name: Annotated[
        str, typer.Argument(help="The new package's name, a Python identifier no module has yet, such as my_env.")
    ],
    directory: Annotated[
        Path | None, typer.Option("--dir", help="Directory to create (default: ./NAME); never overwritten.")
    ] = None,
) -> None:
    """Write a new environment package: environment, tasks, rubric, a test and a README."""
    from envs.authoring.scaffold import write_package

    root = directory or Path(name)
    for path in write_package(name, root):
        console.print(f"wrote {path}")
    console.print(
        f"next: cd {root} && pip install -e . && pytest, then `hillclimb train train.yaml` (a few steps "
        f"of a tiny model on it) or `hillclimb env serve {name}` (not installed: `{name}:ENVIRONMENT`, from {root})"
    )


@app.command()
@reports_errors
def demo(
    env: Annotated[str, typer.Argument(help="Environment with a task suite.")] = "toy_terminal",
    task: Annotated[str | None, typer.Option(help="Task id (default: the split's first).")] = None,
    split: Annotated[str, typer.Option(help="train or heldout.")] = "train",
    provider: Annotated[str, typer.Option(help="Sandbox provider.")] = "local",
    unisolated: Annotated[
        bool, typer.Option("--unisolated", help="Local provider without isolation (trusted envs only).")
    ] = False,
) -> None:
    """Run one task's oracle solution in a fresh sandbox and print every turn."""
    from orchestrator.demo import oracle_episode
    from providers.registry import open_provider

    styles = {"sandbox": "dim", "task": "bold", "command": "bold green", "action": "bold green", "observation": ""}
    styles["reward"] = "bold magenta"

    def show(kind: str, text: str) -> None:  # only a shell's commands follow a `$ ` prompt
        prefix = "$ " if kind == "command" else "" if kind == "observation" else f"[{kind}] "
        console.print(f"{prefix}{text.rstrip(chr(10))}", style=styles[kind], markup=False)

    async def run() -> float:
        options = {"isolation": "none"} if unisolated else {}
        async with open_provider(provider, **options) as prov:
            return await oracle_episode(prov, env, task, split, show)  # type: ignore[arg-type]

    reward = asyncio.run(run())
    raise typer.Exit(0 if reward > 0 else 1)
