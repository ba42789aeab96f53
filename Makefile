# `make run` and `make test` each do their whole set-up from a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= config.example.yaml
# Debian packages the test suite drives for real (exec checks run Debian's monitoring plugins).
DEB_PACKAGES := monitoring-plugins-basic prometheus-alertmanager systemd openssl postgresql util-linux haproxy chromium prometheus

BENCH_PACKAGES := nginx-light prometheus-blackbox-exporter monitoring-plugins-basic nagios4-core openssl
PACKAGES = $(DEB_PACKAGES)

.PHONY: run test lint typecheck unit deps debs bench arch install uninstall clean

# `make install` (as root): the package in its own venv under $(PREFIX), the unit, the config in /etc/healerd.
PREFIX     ?= /opt/healerd
DESTDIR    ?=
UNIT_DIR   ?= /etc/systemd/system
SYSUSERS   ?= /usr/lib/sysusers.d
ETC        ?= /etc/healerd

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

# Module and class sizes, import cycles, SQL outside the store: a report for reviewers (always exits 0).
arch: | $(BIN)/python
	$(BIN)/python tools/arch.py

run: deps
	$(BIN)/healerd run -c $(CONFIG)

lint: deps
	$(BIN)/ruff check healerd tests bench checks tools
	$(BIN)/ruff format --check healerd tests bench checks tools

typecheck: deps
	$(BIN)/mypy healerd

# The end-to-end tests mostly wait on real daemons and timers: three workers keep two cores busy; work
# stealing keeps the long scenarios from piling up on one worker at the end.
PYTEST_WORKERS ?= 3
unit: deps debs
	$(BIN)/pytest -q -n $(PYTEST_WORKERS) --dist worksteal

test: lint typecheck unit

install:
	$(PYTHON) -m venv $(DESTDIR)$(PREFIX)
	$(DESTDIR)$(PREFIX)/bin/pip install --quiet '.[fast]'
	install -D -m 0644 systemd/healerd.service $(DESTDIR)$(UNIT_DIR)/healerd.service
	install -D -m 0644 systemd/healerd.sysusers $(DESTDIR)$(SYSUSERS)/healerd.conf
	install -d -m 0750 $(DESTDIR)$(ETC) $(DESTDIR)$(ETC)/playbooks $(DESTDIR)$(ETC)/checks
	install -m 0644 playbooks/*.yaml $(DESTDIR)$(ETC)/playbooks/
	install -m 0755 checks/* $(DESTDIR)$(ETC)/checks/
	test -e $(DESTDIR)$(ETC)/healerd.yaml || sed -e 's#state_dir: ./.healerd#state_dir: /var/lib/healerd#' \
	  -e 's#path: ./.healerd/#path: /var/lib/healerd/#' config.example.yaml > $(DESTDIR)$(ETC)/healerd.yaml
	install -D -m 0644 docs/operations.md $(DESTDIR)/usr/share/doc/healerd/operations.md
	@if [ -z "$(DESTDIR)" ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then \
	  systemd-sysusers && chgrp -R healerd $(ETC) && systemctl daemon-reload && \
	  echo "installed: systemctl enable --now healerd"; \
	else echo "installed under $(DESTDIR)/ (systemd not running: run systemd-sysusers and systemctl daemon-reload on the target)"; fi

uninstall:
	-systemctl disable --now healerd 2>/dev/null
	rm -f $(DESTDIR)$(UNIT_DIR)/healerd.service $(DESTDIR)$(SYSUSERS)/healerd.conf
	rm -rf $(DESTDIR)$(PREFIX) $(DESTDIR)/usr/share/doc/healerd
	@echo "kept $(ETC) and /var/lib/healerd (config, state, evidence bundles): remove them by hand if you mean it"

clean:
	rm -rf $(VENV) .healerd .pytest_cache .mypy_cache .ruff_cache
