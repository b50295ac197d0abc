# The two commands a user needs:
#   make run    create .venv, install tidings, and serve it on the embedded SQLite store
#   make test   install the development dependencies and run the whole suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Downloaded tools (git-ignored); see $(BIN)/promtool below.
TOOLS := .tools
# apt-get with its package lists and cache in $(TOOLS)/apt: no root needed, the system untouched.
APT_PRIVATE := -o Dir::State::Lists=$(abspath $(TOOLS))/apt/lists -o Dir::Cache=$(abspath $(TOOLS))/apt/cache

.PHONY: run test lint bench fuzz

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

# promtool checks and unit-tests deploy/prometheus/alerts.yml (tests/integration/test_alert_rules.py).
# It comes from Debian's `prometheus` package, downloaded and unpacked into $(TOOLS), never
# installed: only promtool is kept, in the venv. Made once; delete $(BIN)/promtool to fetch it again.
# apt-get download uses the system's package lists, or, when they are missing or stale, lists of
# its own in $(TOOLS)/apt. Without apt-get (not Debian), it warns and the alert-rule test skips
# (fails under CI=true).
$(BIN)/promtool: | $(BIN)/python
	@if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then \
	  if command -v promtool >/dev/null; then \
	    echo "no apt-get/dpkg-deb: the alert-rule test uses $$(command -v promtool)"; \
	  else \
	    echo "WARNING: no apt-get/dpkg-deb to fetch promtool: put promtool on PATH," \
	      "or tests/integration/test_alert_rules.py skips (fails under CI=true)"; \
	  fi; \
	  exit 0; \
	fi; \
	set -e; \
	rm -rf $(TOOLS)/prometheus $(TOOLS)/prometheus_*.deb; \
	mkdir -p $(TOOLS)/apt/lists/partial $(TOOLS)/apt/cache/archives/partial; \
	(cd $(TOOLS) && apt-get -q download prometheus) || \
	  (cd $(TOOLS) && apt-get -q $(APT_PRIVATE) update && apt-get -q $(APT_PRIVATE) download prometheus) || \
	  exit 1; \
	dpkg-deb -x $(TOOLS)/prometheus_*.deb $(TOOLS)/prometheus; \
	cp $(TOOLS)/prometheus/usr/bin/promtool $@; \
	rm -rf $(TOOLS)/prometheus $(TOOLS)/prometheus_*.deb; \
	$@ --version | head -n 1

run: $(VENV)/.installed
	$(BIN)/tidings serve

test: $(VENV)/.installed-dev $(BIN)/promtool
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy src
	$(BIN)/pytest

# schemathesis against the OpenAPI document, on SQLite and PostgreSQL, with many more cases
# than the suite runs, and its coverage phase (boundaries, undocumented methods) too.
FUZZ_EXAMPLES ?= 200
fuzz: $(VENV)/.installed-dev
	TIDINGS_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) TIDINGS_FUZZ_COVERAGE=1 \
	  $(BIN)/pytest -p no:cacheprovider --timeout 3600 tests/integration/test_openapi_fuzz.py

bench: $(VENV)/.installed-dev
	$(BIN)/python -m bench
