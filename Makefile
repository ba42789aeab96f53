# `make run` and `make test` each do their whole set-up from a fresh clone.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= config.example.yaml
# Debian packages the test suite drives for real (exec checks run Debian's monitoring plugins).
DEB_PACKAGES := monitoring-plugins-basic prometheus-alertmanager systemd openssl postgresql util-linux haproxy chromium prometheus busybox nginx-light dnsmasq-base

BENCH_PACKAGES := nginx-light prometheus-blackbox-exporter monitoring-plugins-basic nagios4-core openssl dnsmasq-base
PACKAGES = $(DEB_PACKAGES)

VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' healerd/_version.py)
# What `make deb` needs from Debian: its packaging tools, and the Python the package's venv runs on.
DEB_BUILD_PACKAGES := debhelper dpkg-dev python3.11 python3.11-venv

.PHONY: run test lint typecheck unit deps test-deps debs deb bench bench-probes bench-compare arch install uninstall clean

# `make install`: the same layout as the package, under /usr/local (DESTDIR= stages it for packaging).
INSTALL_PYTHON ?= /usr/bin/python3
PREFIX         ?= /usr/local/lib/healerd
BINDIR         ?= /usr/local/bin
UNIT_DIR       ?= /etc/systemd/system
SYSUSERS_DIR   ?= /usr/local/lib/sysusers.d
TMPFILES_DIR   ?= /usr/local/lib/tmpfiles.d
DOC_DIR        ?= /usr/local/share/doc/healerd
ETC            ?= /etc/healerd
DESTDIR        ?=

# A quiet first start: one line per step; pip speaks only of errors (-qq: a host's pip.conf can make -q chatty).
PIP_QUIET := -qq --disable-pip-version-check --no-input

$(BIN)/python:
	@echo "setting up $(VENV) (first run only)"
	@$(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install $(PIP_QUIET) --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	@echo "installing healerd into $(VENV)"
	@$(BIN)/pip install $(PIP_QUIET) -e '.[fast]'
	@touch $@

# The test tools (pytest, ruff, mypy, moto, …) only for the targets that use them.
$(VENV)/.test-installed: pyproject.toml $(VENV)/.installed
	@echo "installing the test tools into $(VENV)"
	@$(BIN)/pip install $(PIP_QUIET) -e '.[test,fast]'
	@touch $@

deps: $(VENV)/.installed
test-deps: $(VENV)/.test-installed

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
bench: test-deps debs
	$(BIN)/python -m bench $(BENCH_ARGS)

# The tls, dns, icmp and grpc checks against blackbox_exporter's matching probers, same targets, same run.
bench-probes: PACKAGES = $(BENCH_PACKAGES)
bench-probes: test-deps debs
	$(BIN)/python -m bench.probes $(BENCH_ARGS)

# This working tree's healerd against BENCH_BASE's, in one run (new / old per figure; exits 1 past the tolerance).
BENCH_BASE ?= main
bench-compare: PACKAGES = $(BENCH_PACKAGES)
bench-compare: test-deps debs
	$(BIN)/python -m bench.compare $(BENCH_BASE) $(BENCH_ARGS)

# Module and class sizes, import cycles, SQL outside the store: a report for reviewers (always exits 0).
arch: | $(BIN)/python
	$(BIN)/python tools/arch.py

run: deps
	$(BIN)/healerd run -c $(CONFIG)

lint: test-deps
	$(BIN)/ruff check healerd tests bench checks tools
	$(BIN)/ruff format --check healerd tests bench checks tools

typecheck: test-deps
	$(BIN)/mypy healerd

# The end-to-end tests mostly wait on real daemons and timers: three workers keep two cores busy; work
# stealing keeps the long scenarios from piling up on one worker at the end.
PYTEST_WORKERS ?= 3
unit: test-deps debs
	$(BIN)/pytest -q -n $(PYTEST_WORKERS) --dist worksteal

test: lint typecheck unit

# The Debian package: $(DIST)/healerd_$(VERSION)_<arch>.deb, built by dpkg-buildpackage from a copy of this tree
# (without the venv, caches and state), so the build never writes into the working tree.
DEB_BUILD_DIR ?= build/deb
DIST          ?= dist
deb: PACKAGES = $(DEB_BUILD_PACKAGES)
deb: debs
	@rm -rf $(DEB_BUILD_DIR) && mkdir -p $(DEB_BUILD_DIR)/healerd-$(VERSION) $(DIST)
	@tar -cf - --exclude-vcs --exclude=./dist --exclude=./build --exclude=./$(VENV) --exclude=./.healerd \
	  --exclude='*.egg-info' --exclude=__pycache__ --exclude='./.*_cache' --exclude=./.hypothesis . \
	  | tar -xf - -C $(DEB_BUILD_DIR)/healerd-$(VERSION)
	@echo "building the Debian package (log: $(DEB_BUILD_DIR)/build.log)"
	@cd $(DEB_BUILD_DIR)/healerd-$(VERSION) && dpkg-buildpackage -b -uc -us >../build.log 2>&1 \
	  || { tail -n 40 ../build.log; exit 1; }
	@mv $(DEB_BUILD_DIR)/healerd_$(VERSION)_*.deb $(DIST)/
	@ls $(DIST)/healerd_$(VERSION)_*.deb

# `make install` builds the same layout as the package for $(PREFIX), written under $(DESTDIR). Only a
# DESTDIR-free install touches this host's users, tmpfiles and systemd.
install:
	packaging/build-venv '$(DESTDIR)' '$(PREFIX)' '$(INSTALL_PYTHON)'
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(UNIT_DIR) $(DESTDIR)$(DOC_DIR)
	ln -sfn $(PREFIX)/bin/healerd $(DESTDIR)$(BINDIR)/healerd
	sed -e 's#/usr/bin/healerd#$(BINDIR)/healerd#g' -e 's#/usr/share/doc/healerd#$(DOC_DIR)#g' \
	  systemd/healerd.service > $(DESTDIR)$(UNIT_DIR)/healerd.service
	install -D -m 0644 systemd/healerd.sysusers $(DESTDIR)$(SYSUSERS_DIR)/healerd.conf
	install -D -m 0644 systemd/healerd.tmpfiles $(DESTDIR)$(TMPFILES_DIR)/healerd.conf
	install -d -m 0750 $(DESTDIR)$(ETC) $(DESTDIR)$(ETC)/playbooks $(DESTDIR)$(ETC)/checks
	install -m 0644 playbooks/*.yaml $(DESTDIR)$(ETC)/playbooks/
	install -m 0755 checks/* $(DESTDIR)$(ETC)/checks/
	test -e $(DESTDIR)$(ETC)/healerd.yaml || install -m 0640 packaging/healerd.yaml $(DESTDIR)$(ETC)/healerd.yaml
	install -m 0644 README.md docs/*.md $(DESTDIR)$(DOC_DIR)/
	@if [ -n "$(DESTDIR)" ]; then echo "staged under $(DESTDIR)/: on the target run systemd-sysusers, systemd-tmpfiles --create, systemctl daemon-reload"; \
	else systemd-sysusers $(SYSUSERS_DIR)/healerd.conf && systemd-tmpfiles --create $(TMPFILES_DIR)/healerd.conf && \
	  if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi && \
	  echo "installed: edit $(ETC)/healerd.yaml, then systemctl enable --now healerd"; fi

# Never stops or disables a unit when DESTDIR is set: that would act on this host, not on the staged tree.
uninstall:
	@if [ -z "$(DESTDIR)" ] && [ -e $(UNIT_DIR)/healerd.service ] && [ -d /run/systemd/system ]; then \
	  systemctl disable --now healerd.service; fi
	rm -f $(DESTDIR)$(BINDIR)/healerd $(DESTDIR)$(UNIT_DIR)/healerd.service
	rm -f $(DESTDIR)$(SYSUSERS_DIR)/healerd.conf $(DESTDIR)$(TMPFILES_DIR)/healerd.conf
	rm -rf $(DESTDIR)$(PREFIX) $(DESTDIR)$(DOC_DIR)
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "kept $(DESTDIR)$(ETC) and $(DESTDIR)/var/lib/healerd (config, state, evidence bundles): remove them by hand if you mean it"

clean:
	rm -rf $(VENV) .healerd .pytest_cache .mypy_cache .ruff_cache build dist
