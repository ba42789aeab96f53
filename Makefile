# `make run` and `make test` each do their whole set-up from a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= config.example.yaml
# Debian packages the test suite drives for real (exec checks run Debian's monitoring plugins).
DEB_PACKAGES := monitoring-plugins-basic

BENCH_PACKAGES := nginx-light prometheus-blackbox-exporter monitoring-plugins-basic
PACKAGES = $(DEB_PACKAGES)

.PHONY: run test lint typecheck unit deps debs bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test,fast]'
	touch $@

deps: $(VENV)/.installed

# Installs the Debian packages when running as root and they are missing; otherwise says what is needed.
debs:
	@missing=""; for p in $(PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    (apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "note: tests that run real plugins need:$$missing (apt-get install -y$$missing)"; fi; \
	fi

# Benchmarks against blackbox_exporter and check_http (not part of the tests): see docs/performance.md.
bench: PACKAGES = $(BENCH_PACKAGES)
bench: deps debs
	$(BIN)/python -m bench $(BENCH_ARGS)

run: deps
	$(BIN)/healerd run -c $(CONFIG)

lint: deps
	$(BIN)/ruff check healerd tests bench checks
	$(BIN)/ruff format --check healerd tests bench checks

typecheck: deps
	$(BIN)/mypy healerd

unit: deps debs
	$(BIN)/pytest -q

test: lint typecheck unit

clean:
	rm -rf $(VENV) .healerd .pytest_cache .mypy_cache .ruff_cache
