# Two commands: `make demo` (the main job) and `make test` (lint + the whole test suite); `make bench` runs the
# side-by-side benchmarks in their own venvs under .bench/ (never needed by `make test`).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: venv demo test lint clean bench bench-venv bundle

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the CPU wheel of torch 2.13.0 first, so no range below can pull a CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[all,dev]"
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/python demo.py

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: venv lint
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) reports

# -- benchmarks: rivals pinned in benchmarks/paper/requirements*.txt, torch kept at 2.13.0 in the main bench venv;
# zennit needs torchvision, which does not import beside the 2.13.0 CPU wheel, so it gets a second venv.
# rlhook itself is imported from this working tree. BENCH_ARGS= (empty) runs the full grid.
BENCH := .bench
BENCH_ARGS ?= --quick

$(BENCH)/venv/.installed: benchmarks/paper/requirements.txt benchmarks/paper/constraints.txt
	$(PY) -m venv $(BENCH)/venv
	$(BENCH)/venv/bin/pip install -q --upgrade pip
	$(BENCH)/venv/bin/pip install -q torch==2.13.0
	$(BENCH)/venv/bin/pip install -q -c benchmarks/paper/constraints.txt -r benchmarks/paper/requirements.txt
	$(BENCH)/venv/bin/pip install -q --no-deps tdhook==0.3.0
	touch $@

$(BENCH)/venv-vision/.installed: benchmarks/paper/requirements-vision.txt
	$(PY) -m venv $(BENCH)/venv-vision
	$(BENCH)/venv-vision/bin/pip install -q --upgrade pip
	$(BENCH)/venv-vision/bin/pip install -q -r benchmarks/paper/requirements-vision.txt
	touch $@

bench-venv: $(BENCH)/venv/.installed $(BENCH)/venv-vision/.installed

# reports/bench/ (every task, 2 threads), reports/bench-1thread/ (IG and LRP on 1 thread) and the bundle sizes, then
# the results are recorded in benchmarks/paper/results/ and the README's tables rewritten from them.
bench: bench-venv
	$(BENCH)/venv/bin/python -m benchmarks.paper.bench $(BENCH_ARGS)
	$(BENCH)/venv/bin/python -m benchmarks.paper.bench $(BENCH_ARGS) --tasks ig lrp --threads 1 --out reports/bench-1thread
	$(BENCH)/venv/bin/python -m benchmarks.paper.bundle_size
	$(BENCH)/venv/bin/python -m benchmarks.paper.readme --record reports/bench reports/bench-1thread

bundle: $(BENCH)/venv/.installed
	$(BENCH)/venv/bin/python -m benchmarks.paper.bundle_size
