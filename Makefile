# avn-node — `make test` and `make bench-phantom` set up everything they need themselves.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SYSTEM_TOOLS := dciodvfy dcmdump storescu dsrdump Orthanc chromium openssl redis-server pg_isready
SYSTEM_PACKAGES := dcmtk dicom3tools orthanc orthanc-dicomweb chromium openssl redis-server postgresql
DICOMWEB_PLUGIN := /usr/share/orthanc/plugins/libOrthancDicomWeb.so

.PHONY: setup system-deps run viewer viewer-screenshots test test-fast fuzz weights ablation bench-phantom bench-inference bench-ingest bench-node bench-scaleout bench bench-quick preview-readme preview-results clean

setup: $(STAMP) system-deps

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,viewer]'
	touch $(STAMP)

# The real peers the tests use (Debian packages; needs root): dcmtk, dicom3tools, Orthanc with its DICOMweb
# plugin, Chromium for the viewer test (the prebuilt OHIF viewer comes from the npm registry via npm), openssl
# for the TLS tests' certificate authority, redis-server and PostgreSQL for the scale-out tests.
system-deps:
	@missing=""; for t in $(SYSTEM_TOOLS); do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	[ -f $(DICOMWEB_PLUGIN) ] || missing="$$missing orthanc-dicomweb"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing $(SYSTEM_PACKAGES) (missing:$$missing)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; \
	  else echo "missing$$missing: install the Debian packages $(SYSTEM_PACKAGES)"; exit 1; fi; \
	fi

# Starts the node on the embedded default: SQLite and files under ./var, the shipped demo weights.
run: setup
	$(VENV)/bin/avn-node serve --config config/avn-node.toml

# Orthanc (DICOMweb), the node and OHIF on 127.0.0.1: the PACS forwards radiographs to the node, the node
# returns its results, OHIF shows them at http://127.0.0.1:3000/ (README "See it in a viewer").
viewer: setup
	$(PY) -m viewer

# Regenerates the OHIF and dashboard screenshots shown in the README (the browser tests save them).
viewer-screenshots: setup
	AVN_VIEWER_SCREENSHOTS=docs/img AVN_DASHBOARD_SCREENSHOTS=docs/img $(PY) -m pytest -q tests/viewer tests/web/test_browser.py

# Every test; one stuck longer than its timeout (pyproject: 300 s unless marked) fails with its stacks.
test: setup
	$(VENV)/bin/ruff check avn_node tests benchmarks docs viewer
	$(PY) -m pytest -n 2 --dist loadgroup --durations=15 tests

# The quick loop: no full-size renders, no real peers (dcmtk network tools, Orthanc, the node as a process),
# no browser.
test-fast: setup
	$(VENV)/bin/ruff check avn_node tests benchmarks docs viewer
	$(PY) -m pytest -n 2 --dist loadgroup -m "not slow and not peers and not browser" tests

# Fuzzing of the ingest path with new random inputs (make test runs a short fixed sequence of the same test).
FUZZ_EXAMPLES ?= 50000
fuzz: setup
	AVN_FUZZ_RANDOM=1 AVN_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q -p no:cacheprovider \
	  -o timeout=3600 -W ignore::UserWarning tests/reliability/test_fuzz.py

# Trains the shipped demo weights (models/avn-demo-v3): avn-demo-v2 fine-tuned on a new mix of the phantom's three
# styles (the varied one now mostly with the anatomic skeleton) with the training augmentations; then held-out sets
# of each style, the evaluation on the classic one and the cross-style table of v3 against v2 (README "Model").
PROFILE ?= cpu-finetune
BASE := models/avn-demo-v2
WEIGHTS := models/avn-demo-v3
weights: setup
	rm -rf var/weights $(WEIGHTS)/checkpoints
	$(VENV)/bin/avn-node phantom --out var/weights/train --studies 500 --seed 303 --style classic=1,varied=3,alt=1 \
	  --syntax-mix explicit=1 --size-range 1000 2400 --workers 2
	$(VENV)/bin/avn-node train --data var/weights/train --out $(WEIGHTS) --profile $(PROFILE) --seed 1 \
	  --version avn-demo-v3 --init-from $(BASE)
	$(VENV)/bin/avn-node phantom --out var/weights/heldout-classic --studies 100 --seed 9001 --workers 2
	$(VENV)/bin/avn-node phantom --out var/weights/heldout-varied --studies 60 --seed 9101 --style varied \
	  --size-range 1000 3000 --workers 2
	$(VENV)/bin/avn-node phantom --out var/weights/heldout-alt --studies 60 --seed 9201 --style alt \
	  --size-range 1000 3000 --workers 2
	$(VENV)/bin/avn-node evaluate --data var/weights/heldout-classic --weights $(WEIGHTS) --out $(WEIGHTS)
	$(PY) -m avn_node.models.cross_style --weights $(WEIGHTS) $(BASE) --heldout var/weights --out $(WEIGHTS)

# Paper Table VI on the phantom (N = 1 vs 5 training crops per head; test-time averaging on vs off).
ablation: setup
	$(PY) -m benchmarks.resampling_ablation --train var/weights/train --test var/weights/heldout-classic

# The whole suite, and a short one (93 s from a fresh clone); figures in benchmarks/RESULTS.md.
bench: bench-phantom bench-ingest bench-inference bench-node

bench-quick: setup
	$(PY) -m benchmarks.ingest --repeats 1 --files 10
	$(PY) -m benchmarks.inference_speed --weights $(WEIGHTS) --repeats 3
	$(PY) -m benchmarks.node --quick

bench-node: setup
	$(PY) -m benchmarks.node

# serve + 1 and 2 Celery workers (Redis, PostgreSQL) against a local node, in one run (README "Scaling out").
bench-scaleout: setup
	$(PY) -m benchmarks.scaleout

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
