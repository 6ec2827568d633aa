# nerflow: `make demo` runs the whole flow offline; `make test` runs the test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel this project is developed with; a GPU machine may set TORCH_SPEC to its CUDA build.
TORCH_SPEC ?= torch==2.13.0

OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
	PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 TOKENIZERS_PARALLELISM=false

.PHONY: demo test test-fast bytecode lint format install-check serve bench install clean

demo: $(VENV)/.installed-demo
	$(OFFLINE) $(BIN)/nerflow train --config configs/demo.yaml

# Three workers, a test file each at a time (module fixtures such as servers stay within one worker;
# files that share a server go together: conftest.py's SAME_WORKER_AS): many tests wait on servers,
# workers, heartbeats and subprocesses, so three share the 2-core box well. Files are handed out in
# collection order, longest first (conftest.py's LONGEST_FIRST), not xdist's default of the files
# with most tests first, so no long file starts last and runs alone.
PYTEST_XDIST := --dist loadfile --no-loadscope-reorder
test: $(VENV)/.installed-test bytecode
	$(OFFLINE) $(BIN)/python -m pytest -n 3 $(PYTEST_XDIST)

# The project's own modules compiled once: the suite starts a few hundred Python processes that import
# them, and where PYTHONDONTWRITEBYTECODE is set (as on this project's CI machines) each would compile
# them again (an editable install's modules are not compiled by pip). Unchanged files are skipped.
bytecode:
	@$(BIN)/python -m compileall -q tasks flows deployments bench tests

# Everything but the end-to-end tests (servers, worker, browser, torchrun, benchmark scripts).
test-fast: $(VENV)/.installed-test bytecode
	$(OFFLINE) $(BIN)/python -m pytest -n 2 $(PYTEST_XDIST) -m "not slow"

# Formatting and lint rules of pyproject.toml's [tool.ruff]: `make format` applies them.
lint: $(VENV)/.installed-test
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format: $(VENV)/.installed-test
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The wheel, installed (not editable) in a fresh venv, trains the demo, serves and creates a pool.
install-check: $(VENV)/.installed-test
	$(OFFLINE) $(BIN)/python tests/install_check.py

# A local Prefect server (SQLite), the `gpu` process pool, the deployments and a worker; prints the UI.
serve: $(VENV)/.installed-demo
	PREFECT_SERVER_ANALYTICS_ENABLED=false $(BIN)/nerflow serve --workdir work

# Quality, speed and orchestration benchmarks at small sizes; bench/README.md has the full-size commands and the time it takes.
bench: $(VENV)/.installed-demo
	$(OFFLINE) $(BIN)/python -m bench.quality --regimes 2k --seeds 1 --variants plain nerflow --epochs 1 --json bench/results/quality-small.json
	$(OFFLINE) $(BIN)/python -m bench.speed --train-size 2000 --epochs 1 --val-size 500 --json bench/results/speed-small.json
	$(OFFLINE) $(BIN)/python -m bench.orchestration --train-size 500 --epochs 1 --json bench/results/orchestration-small.json

install: $(VENV)/.installed-demo

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# torch first, pinned, so the project's torch range is already satisfied and pip downloads no other build.
$(VENV)/.installed-demo: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[demo]"
	touch $@

# prefect-docker and prefect-kubernetes (their dependencies come with the test extra) in a folder of
# their own, which only tests/test_pool_templates.py puts on its path: installed in site-packages,
# Prefect would import them (kubernetes included, ~1.3 CPU seconds) into every server, worker, flow run
# and command the suite starts.
POOL_WORKERS := $(VENV)/pool-workers
$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[demo,test]"
	$(BIN)/pip install --quiet --no-deps --upgrade --target $(POOL_WORKERS) "prefect-docker>=0.6" "prefect-kubernetes>=0.6"
	touch $@ $(VENV)/.installed-demo

clean:
	rm -rf $(VENV) runs work .pytest_cache
