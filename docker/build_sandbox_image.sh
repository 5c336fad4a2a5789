#!/usr/bin/env bash
# Build the sandbox image from this checkout: wheels on the host, then a `docker build` with no network.
#
#   docker/build_sandbox_image.sh [--base IMAGE] [--tag TAG]
#       --base  base image (default hillclimb/base:bookworm, from docker/make_base_image.sh;
#               python:3.11-slim where a registry is reachable)
#       --tag   image tag (default hillclimb/sandbox:dev)
#
# The wheels are the project's base install only (pydantic, typer, rich, pyyaml and their deps, at the
# versions requirements.lock pins), never
# the `train` extra, so no torch or Ray reaches the image. $PYTHON (default .venv/bin/python) builds
# them and must be the base image's Python minor version, 3.11, for pydantic-core's binary wheel to fit.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
base=hillclimb/base:bookworm tag=hillclimb/sandbox:dev
while [[ $# -gt 0 ]]; do
    case $1 in
        --base) base=$2; shift 2 ;;
        --tag) tag=$2; shift 2 ;;
        *) echo "usage: $0 [--base IMAGE] [--tag TAG]" >&2; exit 2 ;;
    esac
done
python=${PYTHON:-$repo/.venv/bin/python}
"$python" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
    || { echo "build_sandbox_image.sh: $python is not Python 3.11; set PYTHON" >&2; exit 1; }

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
# The versions of requirements.lock, so the image serves with what the tests ran.
grep -oE '^[A-Za-z0-9][A-Za-z0-9._-]*==[^ \\;]+' "$repo/requirements.lock" >"$ctx/constraints.txt"
"$python" -m pip wheel --quiet --disable-pip-version-check --constraint "$ctx/constraints.txt" \
    --wheel-dir "$ctx/wheels" "$repo"
echo "build_sandbox_image.sh: wheels: $(cd "$ctx/wheels" && echo *)"
# The label names the environment code inside; the Docker provider refuses an image whose label
# differs from the code it runs beside (envs/digest.py).
digest=$(cd "$repo" && "$python" -c 'from envs.digest import IMAGE_LABEL, envs_digest; print(f"{IMAGE_LABEL}={envs_digest()}")')
docker build --network none --build-arg BASE_IMAGE="$base" --label "$digest" --tag "$tag" --file "$repo/docker/Dockerfile" "$ctx"
docker image ls "$tag" --format 'build_sandbox_image.sh: built {{.Repository}}:{{.Tag}}, {{.Size}}'
