# The two commands a newcomer needs: `make demo` and `make test` (both install everything first).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export DVC_NO_ANALYTICS := 1
# dvc.yaml calls the `kubeclip` console script (a comment after the value would end up in PATH)
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install system-deps demo test test-slow bench images lock clean

## install: a virtual environment with kubeclip and the tested set of dependencies (constraints.txt)
install: $(STAMP)
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

## system-deps: promtool (Debian's prometheus package) for the alerting-rule tests; installs only as root
system-deps:
	@if command -v promtool >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; \
	else echo "promtool is missing: apt-get install -y prometheus (the promtool tests skip without it)"; fi

## demo: the main job on the embedded synthetic default, ending with a real Triton answering zero-shot queries
demo: install
	dvc repro
	@cat runs/serve/results.md

## test: the default suite (what CI runs)
test: install system-deps
	$(PY) -m pytest

## test-slow: the long tests (full demo from a fresh clone, long benchmarks)
test-slow: install
	$(PY) -m pytest -m slow

## bench: the speed benchmarks, each printing a ratio against a baseline run side by side
bench: install
	$(PY) benchmarks/train_step_throughput.py
	$(PY) benchmarks/train_vs_open_clip.py

## images: the runtime, training, Triton and transformer images (needs a Docker engine); names and bases from components/images.py
IMAGE = $(shell $(PYTHON) -m kubeclip.components.images $(1))
images:
	docker build -f images/runtime.Dockerfile --build-arg RUNTIME_BASE=$(call IMAGE,RUNTIME_BASE) -t $(call IMAGE,RUNTIME_IMAGE) .
	docker build -f images/train.Dockerfile --build-arg TRAIN_BASE=$(call IMAGE,TRAIN_BASE) -t $(call IMAGE,TRAIN_IMAGE) .
	docker build -f images/triton.Dockerfile --build-arg TRITON_BASE=$(call IMAGE,TRITON_BASE) -t $(call IMAGE,TRITON_IMAGE) .
	docker build -f images/transformer.Dockerfile --build-arg TRANSFORMER_BASE=$(call IMAGE,TRANSFORMER_BASE) -t $(call IMAGE,TRANSFORMER_IMAGE) .

## lock: re-resolve the dependencies and write the tested set to constraints.txt
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet -e '.[dev]'
	{ echo "# Tested set: every package at the version the test suite last passed with."; \
	  echo "# Regenerate with \`make lock\` after changing dependencies in pyproject.toml."; \
	  .lock-venv/bin/pip freeze --exclude-editable | grep -v '^kubeclip'; } > constraints.txt
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) runs .pytest_cache
