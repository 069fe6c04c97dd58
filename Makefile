# Two commands on a fresh machine: `make demo` and `make test`. Both build the local venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build from local disk; GPU clusters override, e.g. `make install TORCH_SPEC=` to keep their torch.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install lint test test-fast demo clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if [ -n "$(TORCH_SPEC)" ]; then $(PY) -m pip install -q "$(TORCH_SPEC)"; fi
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

# ruff lint + format check (ruff.toml); the test targets run it first, so CI checks it too.
lint: install
	$(VENV)/bin/ruff check megarec tests benchmarks tools
	$(VENV)/bin/ruff format --check megarec tests benchmarks tools

test: install lint
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: install lint
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

# MovieLens-100k through every stage (about 30 minutes on two CPU cores); report in runs/demo/report.md.
# Rerunning skips finished stages; DEMO_ARGS passes options, e.g. DEMO_ARGS="--force" or "--profile ci".
DEMO_ARGS ?=
demo: install
	HF_HUB_OFFLINE=1 $(PY) -m megarec demo --out runs/demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
