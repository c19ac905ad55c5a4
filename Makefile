# Two set-up commands: `make demo` and `make test`. Both build .venv from nothing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Exactly this torch: the CPU build that this machine keeps on disk. Anything else (a bare
# `torch`, a newer version) pulls a CUDA build of several GB.
TORCH := torch==2.13.0

.PHONY: demo demo-ner test lint types unit properties docs-test bench docs clean

$(VENV)/.base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[spacy]'
	touch $@

$(VENV)/.dev: $(VENV)/.base
	$(PY) -m pip install -q -e '.[dev,spacy]'
	touch $@

$(VENV)/.docs: $(VENV)/.dev
	$(PY) -m pip install -q -e '.[docs]'
	touch $@

demo: $(VENV)/.base
	$(PY) examples/spacy_demo/run.py

# torch_ner: train, add an entity type, old entities kept; writes out/torch_ner/f1_per_type.png
demo-ner: $(VENV)/.base
	$(PY) -m pip install -q -e '.[spacy,plots]'
	$(PY) examples/torch_ner/run.py

test: lint types unit properties docs-test

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check torchlayers tests property_tests bench examples
	$(VENV)/bin/ruff format --check torchlayers tests property_tests bench examples
	$(VENV)/bin/lint-imports

types: $(VENV)/.dev
	$(VENV)/bin/mypy torchlayers

unit: $(VENV)/.dev
	$(PY) -m pytest -q tests

properties: $(VENV)/.dev
	$(PY) -m pytest -q property_tests --hypothesis-profile=ci

docs-test: $(VENV)/.dev
	$(PY) -m pytest -q --markdown-docs -p no:randomly docs README.md -o testpaths=

bench: $(VENV)/.base
	$(PY) -m bench

docs: $(VENV)/.docs
	$(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) site .pytest_cache .mypy_cache .ruff_cache .hypothesis
