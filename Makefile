# avn-node — `make test` and `make bench-phantom` set up everything they need themselves.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SYSTEM_TOOLS := dciodvfy dcmdump storescu dsrdump Orthanc

.PHONY: setup system-deps run test weights ablation bench-phantom bench-inference bench-ingest bench-node bench bench-quick preview-readme preview-results clean

setup: $(STAMP) system-deps

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# dcmtk, dicom3tools and Orthanc are the real peers the tests check files with (Debian packages; needs root).
system-deps:
	@missing=""; for t in $(SYSTEM_TOOLS); do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing dcmtk dicom3tools orthanc (missing:$$missing)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dcmtk dicom3tools orthanc >/dev/null; \
	  else echo "missing$$missing: install the Debian packages dcmtk, dicom3tools and orthanc"; exit 1; fi; \
	fi

# Starts the node on the embedded default: SQLite and files under ./var, the shipped demo weights.
run: setup
	$(VENV)/bin/avn-node serve --config config/avn-node.toml

test: setup
	$(VENV)/bin/ruff check avn_node tests benchmarks docs
	$(PY) -m pytest -n 2 --dist loadgroup tests

# Reproduces the shipped demo weights (models/avn-demo-v1) and their evaluation; PROFILE=cpu takes about
# an hour on 2 CPU cores (see models/avn-demo-v1/model_card.md).
PROFILE ?= cpu
WEIGHTS := models/avn-demo-v1
weights: setup
	rm -rf var/weights $(WEIGHTS)/checkpoints
	$(VENV)/bin/avn-node phantom --out var/weights/train --studies 400 --seed 101 --syntax-mix explicit=1 --workers 2
	$(VENV)/bin/avn-node train --data var/weights/train --out $(WEIGHTS) --profile $(PROFILE) --seed 1 --version avn-demo-v1
	$(VENV)/bin/avn-node phantom --out var/weights/heldout --studies 100 --seed 9001 --workers 2
	$(VENV)/bin/avn-node evaluate --data var/weights/heldout --weights $(WEIGHTS) --out $(WEIGHTS)

# Paper Table VI on the phantom (N = 1 vs 5 training crops per head; test-time averaging on vs off).
ablation: setup
	$(PY) -m benchmarks.resampling_ablation --train var/weights/train --test var/weights/heldout

# The whole suite, and a short one (93 s from a fresh clone); figures in benchmarks/RESULTS.md.
bench: bench-phantom bench-ingest bench-inference bench-node

bench-quick: setup
	$(PY) -m benchmarks.ingest --repeats 1 --files 10
	$(PY) -m benchmarks.inference_speed --weights $(WEIGHTS) --repeats 3
	$(PY) -m benchmarks.node --quick

bench-node: setup
	$(PY) -m benchmarks.node

bench-ingest: setup
	$(PY) -m benchmarks.ingest

bench-inference: setup
	$(PY) -m benchmarks.inference_speed --weights $(WEIGHTS)

bench-phantom: setup
	$(PY) -m benchmarks.phantom_speed

# Regenerates the contact sheet shown in the README.
preview-readme: setup
	rm -rf build/preview && $(VENV)/bin/avn-node phantom --out build/preview --studies 16 --seed 2026 --preview
	mkdir -p docs/img && cp build/preview/preview.png docs/img/phantom-preview.png

# Regenerates the pictures of returned secondary captures shown in the README.
preview-results: setup
	$(PY) docs/preview_results.py $(WEIGHTS)

clean:
	rm -rf $(VENV) build .pytest_cache
