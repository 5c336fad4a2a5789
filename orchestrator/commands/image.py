"""`hillclimb image build`: the sandbox image, from this checkout's wheels, with no network."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Annotated

import typer

from orchestrator.console import console

app = typer.Typer(help="Build the sandbox image.", no_args_is_help=True)

OFFLINE_BASE = "hillclimb/base:bookworm"


def _repo_root() -> Path:
    root = Path(__file__).resolve().parents[2]
    if not (root / "docker" / "Dockerfile").exists():
        raise typer.BadParameter(
            f"no docker/Dockerfile under {root}: `image build` runs from a hillclimb source checkout"
        )
    return root


@app.command()
def build(
    base: Annotated[
        str,
        typer.Option(
            help=f"Base image: {OFFLINE_BASE} is made offline with debootstrap; python:3.11-slim needs a registry."
        ),
    ] = OFFLINE_BASE,
    tag: Annotated[str, typer.Option(help="Tag of the sandbox image.")] = "hillclimb/sandbox:dev",
) -> None:
    """Build wheels of this checkout on the host, then `docker build --network none` the sandbox image."""
    root = _repo_root()
    if base == OFFLINE_BASE:
        subprocess.run(["bash", str(root / "docker" / "make_base_image.sh"), base], check=True)
    subprocess.run(["bash", str(root / "docker" / "build_sandbox_image.sh"), "--base", base, "--tag", tag], check=True)
    console.print(f"built [bold]{tag}[/] on {base}")
