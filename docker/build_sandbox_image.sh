#!/usr/bin/env bash
# Build the sandbox image from this checkout: wheels on the host, then a `docker build` with no network.
#
#   docker/build_sandbox_image.sh [--base IMAGE] [--tag TAG] [--package DIR]...
#       --base     base image (default hillclimb/base:bookworm, from docker/make_base_image.sh;
#                  python:3.11-slim where a registry is reachable)
#       --tag      image tag (default hillclimb/sandbox:dev)
#       --package  a project directory (pyproject.toml) to install beside hillclimb: a user's
#                  environment package; repeatable
#
# The wheels are the project's base install only (pydantic, typer, rich, pyyaml and their deps, at the
# versions requirements.lock pins), never
# the `train` extra, so no torch or Ray reaches the image. $PYTHON (default .venv/bin/python) builds
# them and must be the base image's Python minor version, 3.11, for pydantic-core's binary wheel to fit.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
base=hillclimb/base:bookworm tag=hillclimb/sandbox:dev
packages=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --base) base=$2; shift 2 ;;
        --tag) tag=$2; shift 2 ;;
        --package) packages+=("$(cd "$2" && pwd)"); shift 2 ;;
        *) echo "usage: $0 [--base IMAGE] [--tag TAG] [--package DIR]..." >&2; exit 2 ;;
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
    --wheel-dir "$ctx/wheels" "$repo" "${packages[@]}"
echo "build_sandbox_image.sh: wheels: $(cd "$ctx/wheels" && echo *)"
# The labels name the environment code inside; the Docker provider refuses an image whose labels
# differ from the code it runs beside (envs/digest.py): the envs package's, and for each --package
# its distribution (installed by name) and a digest per top-level import package in it.
labels=$(cd "$repo" && "$python" - "${packages[@]}" <<'PY'
import sys, tomllib
from pathlib import Path
from envs.digest import IMAGE_LABEL, directory_digest, envs_digest, package_label

print(f"--label {IMAGE_LABEL}={envs_digest()}")
for project in map(Path, sys.argv[1:]):
    name = tomllib.loads((project / "pyproject.toml").read_text())["project"]["name"]
    print(f"--install {name}")
    roots = [project / "src"] if (project / "src").is_dir() else [project]
    found = [d for root in roots for d in sorted(root.iterdir()) if (d / "__init__.py").is_file() and d.name != "tests"]
    if not found:
        sys.exit(f"build_sandbox_image.sh: {project} holds no package (a directory with __init__.py)")
    for package in found:
        print(f"--label {package_label(package.name)}={directory_digest(package)}")
PY
)
install=hillclimb build_args=()
while read -r kind value; do
    case $kind in
        --label) build_args+=(--label "$value") ;;
        --install) install+=" $value" ;;
    esac
done <<<"$labels"
docker build --network none --build-arg BASE_IMAGE="$base" --build-arg PACKAGES="$install" "${build_args[@]}" \
    --tag "$tag" --file "$repo/docker/Dockerfile" "$ctx"
docker image ls "$tag" --format 'build_sandbox_image.sh: built {{.Repository}}:{{.Tag}}, {{.Size}}'
