"""`hillclimb image build`: the sandbox image, from this checkout's wheels, with no network;
`hillclimb image push REF`: that image to a registry a cluster pulls from, pinned by digest in the
chart's values."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Annotated

import typer

from orchestrator.console import console, reports_errors

app = typer.Typer(help="Build the sandbox image and push it to a registry.", no_args_is_help=True)

OFFLINE_BASE = "hillclimb/base:bookworm"
DEFAULT_TAG = "hillclimb/sandbox:dev"


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
    tag: Annotated[str, typer.Option(help="Tag of the sandbox image.")] = DEFAULT_TAG,
    env: Annotated[
        list[Path] | None,
        typer.Option(
            help="A project directory (with pyproject.toml) of your environment package, to install in the "
            "image beside hillclimb; repeatable.",
            exists=True,
            file_okay=False,
            resolve_path=True,
        ),
    ] = None,
) -> None:
    """Build wheels of this checkout (and of --env packages) on the host, then `docker build --network none`
    the sandbox image, labelled with the digest of each environment package inside."""
    root = _repo_root()
    projects = env or []
    for project in projects:
        if not (project / "pyproject.toml").is_file():
            raise typer.BadParameter(f"{project} has no pyproject.toml: give your environment's project directory")
    if base == OFFLINE_BASE:
        _run_step("making the base image", ["bash", str(root / "docker" / "make_base_image.sh"), base])
    packages = [arg for project in projects for arg in ("--package", str(project))]
    script = root / "docker" / "build_sandbox_image.sh"
    _run_step(f"building {tag}", ["bash", str(script), "--base", base, "--tag", tag, *packages])
    console.print(f"built [bold]{tag}[/] on {base}" + "".join(f", with {p.name}" for p in projects))


@app.command()
@reports_errors
def push(
    ref: Annotated[str, typer.Argument(help="Where to: REGISTRY/REPOSITORY[:TAG] (tag `latest` if none).")],
    image: Annotated[str, typer.Option(help="The local image to push.")] = DEFAULT_TAG,
) -> None:
    """Tag the sandbox image as REF and push it through the Docker engine (its `docker login`
    credentials), labels kept; print its digest and the Helm values that run it."""
    from providers.docker_registry import push_image

    pushed = push_image(image, ref, progress=console.print)
    lines = [
        f"pushed [bold]{pushed.repository}:{pushed.tag}[/] ({image}), digest {pushed.digest}",
        *(f"  label {key}={value}" for key, value in sorted(pushed.labels.items())),
        "The chart's sandboxes run it, pinned by digest, with",
        f"  helm upgrade --install hillclimb ./helm/hillclimb -f my-values.yaml --set sandboxes.image={pushed.pinned}",
        "or in my-values.yaml:",
        f"  sandboxes:\n    image: {pushed.pinned}",
        f"and a run outside the chart with --set provider.options.image={pushed.pinned}",
    ]
    console.print("\n".join(lines), soft_wrap=True)  # whole lines, to copy: digests and commands never folded


def _run_step(what: str, command: list[str]) -> None:
    """Run a build script, its output the user's; a failure is one line (the script said why above it)."""
    done = subprocess.run(command)
    if done.returncode:
        console.print(f"[bold red]error:[/] {what} failed (exit status {done.returncode}): see its output above")
        raise typer.Exit(done.returncode)
