# The README's two commands: `make book` (the main job) and `make test`. Each builds the local
# virtual environment it needs on a fresh machine: torch==2.13.0 first (the CPU wheel on the
# project's machines, the normal PyPI build elsewhere), then the project with pinned dependencies.
SHELL := /bin/bash
VENV ?= .venv
PYTHON := $(VENV)/bin/python
HOST_PYTHON ?= python3
TORCH_VERSION ?= 2.13.0
QUICK ?=
export PYTHONHASHSEED := 0
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM := false

.PHONY: test book miniatures bench env clean

$(VENV)/.stamp: pyproject.toml
	test -x $(PYTHON) || $(HOST_PYTHON) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q torch==$(TORCH_VERSION)
	$(PYTHON) -m pip install -q -e ".[test,book]"
	touch $@

env: $(VENV)/.stamp

test: $(VENV)/.stamp
	$(PYTHON) -m pytest -q tests

book: $(VENV)/.stamp
	$(PYTHON) book/build.py $(if $(QUICK),--quick,)

miniatures: $(VENV)/.stamp
	$(PYTHON) -m training.make_miniatures $(if $(MODEL),--only $(MODEL),)

bench: $(VENV)/.stamp
	$(PYTHON) bench/bench.py $(if $(QUICK),--quick,)

clean:
	rm -rf _build book/generated
