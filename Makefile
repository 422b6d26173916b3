# Every target sets up what it needs: a fresh machine runs `make quickstart` or `make test` directly.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed


.PHONY: errors install system quickstart test test-all lint coverage coverage-timm bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# Debian packages (the Fashion-MNIST data): apt-get as root, sudo when it needs no password,
# else one line saying the command to run.
system:
	scripts/setup-system.sh dataset-fashion-mnist

quickstart: system $(STAMP)
	$(PY) -m widthsearch quickstart

test: system $(STAMP)
	$(PY) -m pytest

test-all: system $(STAMP)
	$(PY) -m pytest -m "slow or not slow"

lint: $(STAMP)
	$(PY) -m ruff check widthsearch tests bench

coverage: $(STAMP) coverage-timm
	$(PY) -m widthsearch coverage --out docs/coverage.md

coverage-timm: $(STAMP)
	$(PY) -m widthsearch coverage --zoo timm --out docs/coverage-timm.md

errors: $(STAMP)
	$(PY) bench/errors_catalogue.py

bench: $(STAMP)
	$(PY) bench/bench_core.py --out bench/results/core.json
	$(PY) bench/bench_train.py --out bench/results/train.json
	$(PY) bench/bench_latency.py --out bench/results/latency.json

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
