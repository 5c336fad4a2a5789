# Set-up and entry points. `make run` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch first, pinned: an unpinned torch would pull the multi-GB CUDA build. GPU users
# install their own torch; the project's range stays open.
TORCH_PIN ?= torch==2.13.0

.PHONY: venv run test lint bench clean

$(BIN)/hillclimb: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_PIN)"
	$(BIN)/pip install --quiet -e ".[train,docker,dev]"
	touch $@

venv: $(BIN)/hillclimb

run: venv
	$(BIN)/hillclimb env demo toy_terminal

test: venv
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

lint: venv
	$(BIN)/ruff check .
	$(BIN)/lint-imports

bench: venv
	$(BIN)/python -m bench.env_step
	$(BIN)/python -m bench.sandbox_start

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
