# avn-node — `make test` and `make bench-phantom` set up everything they need themselves.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SYSTEM_TOOLS := dciodvfy dcmdump storescu

.PHONY: setup system-deps test bench-phantom preview-readme clean

setup: $(STAMP) system-deps

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# dcmtk and dicom3tools are the real peers the tests check files with (Debian packages; needs root).
system-deps:
	@missing=""; for t in $(SYSTEM_TOOLS); do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing dcmtk dicom3tools (missing:$$missing)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dcmtk dicom3tools >/dev/null; \
	  else echo "missing$$missing: install the Debian packages dcmtk and dicom3tools"; exit 1; fi; \
	fi

test: setup
	$(VENV)/bin/ruff check avn_node tests benchmarks
	$(PY) -m pytest -n 2 tests

bench-phantom: setup
	$(PY) benchmarks/phantom_speed.py

# Regenerates the contact sheet shown in the README.
preview-readme: setup
	rm -rf build/preview && $(VENV)/bin/avn-node phantom --out build/preview --studies 16 --seed 2026 --preview
	mkdir -p docs/img && cp build/preview/preview.png docs/img/phantom-preview.png

clean:
	rm -rf $(VENV) build .pytest_cache
