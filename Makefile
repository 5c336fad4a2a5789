# Set-up and entry points. `make run` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch first, pinned: an unpinned torch would pull the multi-GB CUDA build. GPU users
# install their own torch; the project's range stays open.
TORCH_PIN ?= torch==2.13.0

.PHONY: venv images run test test-gpu test-latest lint lock lock-upgrade bench docs clean

# The dev/CI/main-job install comes from requirements.lock (every package pinned, with hashes);
# the package itself goes in on top, editable and without dependencies of its own.
$(BIN)/hillclimb: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_PIN)"
	$(BIN)/pip install --quiet --require-hashes -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	$(BIN)/pip check
	$(BIN)/hillclimb model pull smollm2-135m-instruct
	touch $@

venv: $(BIN)/hillclimb

run: venv
	$(BIN)/hillclimb train configs/echo_toy.yaml

# The Docker engine and the sandbox image, where this machine can have them (root on Debian
# installs and starts the engine; elsewhere an engine that already runs is used). Without
# one, the Docker tests skip with a message (and fail under HILLCLIMB_REQUIRE_DOCKER=1).
images: venv
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then bash .ci/docker_setup.sh; fi
	@if docker info >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ]; then bash docker/make_base_image.sh; fi; \
		PYTHON=$(BIN)/python bash docker/build_sandbox_image.sh; \
	else echo "no Docker engine here: Docker tests will skip"; fi

test: lint images
	$(BIN)/python -m pytest

# The GPU lane: vLLM and liger-kernel (the `vllm` and `gpu` extras) into the venv, then the
# gpu-marked tests. torch is left unpinned here on purpose: on a GPU machine the CUDA build vLLM
# asks for is the one wanted, not TORCH_PIN's CPU wheel, which goes first (a CPU build of the same
# number would satisfy vLLM's pin). The venv then holds more than the lock; `make clean venv`
# returns to it. Without an NVIDIA GPU nothing is installed and the tests say why they skip.
test-gpu: venv
	@if command -v nvidia-smi >/dev/null && nvidia-smi -L; then \
		if $(BIN)/python -c "import torch, sys; sys.exit('+cpu' not in torch.__version__)"; then \
			$(BIN)/pip uninstall --quiet --yes torch; fi; \
		$(BIN)/pip install --quiet -e ".[gpu,vllm]" && \
		$(BIN)/python -c "import torch; assert torch.cuda.is_available(), f'torch {torch.__version__} sees no GPU'"; \
	else echo "no NVIDIA GPU here (nvidia-smi found none): the gpu tests will skip"; fi
	$(BIN)/python -m pytest -m gpu

lint: venv
	$(BIN)/python .ci/lockfile.py check "$(TORCH_PIN)"
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# Re-resolve requirements.lock after a change to pyproject.toml's ranges (uv), moving no pin the
# ranges still allow; `make lock-upgrade` takes the newest versions they allow.
# uv comes in a venv of its own: the lock must be makeable before the main venv exists.
LOCKER := .venv-lock
lock:
	test -x $(LOCKER)/bin/uv || { $(PYTHON) -m venv $(LOCKER) && $(LOCKER)/bin/pip install --quiet uv; }
	PATH="$(abspath $(LOCKER)/bin):$$PATH" $(LOCKER)/bin/python .ci/lockfile.py make "$(TORCH_PIN)" $(LOCK_FLAGS)

lock-upgrade:
	$(MAKE) lock LOCK_FLAGS=--upgrade

# The suite against the newest releases the ranges allow, not the lock: run it on demand to see
# what the next `make lock` would bring. Its own venv, rebuilt each time.
LATEST := .venv-latest
test-latest: images
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/pip install --quiet --upgrade pip
	$(LATEST)/bin/pip install --quiet "$(TORCH_PIN)"
	$(LATEST)/bin/pip install --quiet --upgrade -e ".[train,docker,k8s,aca,dev]"
	$(LATEST)/bin/pip list --format=freeze > $(LATEST)/versions.txt
	$(LATEST)/bin/python -m pytest

# The platform's benchmarks into bench/results/, then the README's and docs' tables rendered from
# them (bench/render.py). Refused on a tree with uncommitted changes: a published figure names the
# commit that made it. The longer runs (the main job, SmolLM2, λ sweeps) are listed in bench/README.md.
BENCHES ?= env_step sandbox_start concurrency rollout echo_loss
bench: venv images
	@git diff --quiet HEAD || { echo "make bench: the tree has uncommitted changes; commit them first"; exit 1; }
	for b in $(BENCHES); do $(BIN)/python -m bench.$$b || exit 1; done
	$(BIN)/python -m bench.render

# The documentation site, from docs/ and mkdocs.yml, into site/ (the test suite builds it too,
# into a temporary directory: tests/test_docs.py).
docs: venv
	$(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) $(LATEST) $(LOCKER) *.egg-info .pytest_cache site
