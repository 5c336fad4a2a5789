#!/usr/bin/env bash
# Wheels (CPython 3.12, manylinux x86-64) of what bench/gpu_checks.sh needs and a lent GPU
# machine's image lacks: that machine reaches no network, and its python3 already holds torch,
# transformers, peft, accelerate, pytest, uvloop, typer, rich, pyyaml and prometheus-client.
# Run here, in the repo root; then carry `.whl` to the device run (under 64 MiB in all).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir .whl
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64)
# Pins as requirements.lock has them, where the lock has the package.
pin() { grep -oiE "^$1==[^ ]+" requirements.lock || echo "$1"; }
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]/#/--platform=}" -d .whl \
    "$(pin pydantic)" "$(pin pydantic-core)" "$(pin annotated-types)" "$(pin typing-inspection)" \
    "$(pin orjson)" "$(pin httptools)" "$(pin pytest-asyncio)" "$(pin gguf)" liger-kernel
du -sh .whl
