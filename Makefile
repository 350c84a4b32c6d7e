# Two commands on a fresh clone: `make demo` (set-up included) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test install benchmark clean

install: $(VENV)/.installed

# torch comes first, from the local CPU wheel, so no dependency can pull a CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

demo: install
	$(BIN)/frpo demo

test: install
	$(BIN)/python -m pytest

benchmark: install
	$(BIN)/python benchmarks/step_time.py

clean:
	rm -rf $(VENV) results/demo_toy .pytest_cache
