# Two commands on a fresh machine: `make demo` and `make test`. Both build the local venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build from local disk; GPU clusters override, e.g. `make install TORCH_SPEC=` to keep their torch.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install test test-fast demo clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if [ -n "$(TORCH_SPEC)" ]; then $(PY) -m pip install -q "$(TORCH_SPEC)"; fi
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

# Until the end-to-end MovieLens demo lands: a TP=2 pre-training run of the tiny CPU recipe on mock data.
demo: install
	NPROC=2 PYTHON=$(PY) launch/local.sh --config configs/pretrain/tiny_cpu.yaml data.mock=true \
		parallel.tensor_model_parallel_size=2 logging.run_dir=runs/demo checkpoint.save=runs/demo/checkpoints

clean:
	rm -rf $(VENV) build *.egg-info
