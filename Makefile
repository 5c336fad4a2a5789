# Set-up and entry points. `make run` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch first, pinned: an unpinned torch would pull the multi-GB CUDA build. GPU users
# install their own torch; the project's range stays open.
TORCH_PIN ?= torch==2.13.0

.PHONY: venv images run test lint bench clean

$(BIN)/hillclimb: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_PIN)"
	$(BIN)/pip install --quiet -e ".[train,docker,dev]"
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

test: venv images
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

lint: venv
	$(BIN)/ruff check .
	$(BIN)/lint-imports

bench: venv images
	$(BIN)/python -m bench.env_step
	$(BIN)/python -m bench.sandbox_start
	$(BIN)/python -m bench.concurrency
	$(BIN)/python -m bench.rollout
	$(BIN)/python -m bench.echo_loss

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
