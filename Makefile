# SPDX-License-Identifier: GPL-2.0-or-later
#
#   make demo    NFLOG, NFQUEUE and conntrack in a throw-away network namespace (root)
#   make test    the whole test suite, unit and integration (root)
#   make typecheck  mypy --strict over src/nfbind, for Python 3.9 and later
#   make test-matrix  nfbind from its sdist on every supported Python here (3.9-3.13):
#                a venv each, the unit tests, one integration test per channel, the demo
#   make bench   the throughput benchmarks, nfbind beside C references (root)
#   make soak    the fault and load suite at full size (root; tens of minutes)
#   make fuzz    the C attribute parsers under libFuzzer and AddressSanitizer, time-bounded
#   make docs    the Sphinx site in docs/_build/html, warnings as errors
#   make deps    the Debian packages nfbind builds and tests against
#   make venv    .venv with nfbind installed in editable mode, extras test+scapy+dev+metrics
#   make clean   remove .venv and every build product
#
# On a fresh Debian 12 machine, `make demo` and `make test` install what they need.

SHELL   := /bin/bash
PYTHON  ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.stamp-install
GOAL    := $(or $(MAKECMDGOALS),all)

# Debian packages: C libraries and headers, the tools the tests cross-check against
# (nfdump: the nfcapd IPFIX collector and the nfdump reader the flow tests use), and a
# compiler (python3-dev: the headers the system Python's build needs, as in make
# test-matrix). python3-venv is added below only when `python3 -m venv` cannot work,
# for $(PYTHON) or the system's python3.
APT_PACKAGES := libnetfilter-log-dev libnetfilter-queue-dev libnetfilter-conntrack-dev \
                libnfnetlink-dev libmnl-dev iptables conntrack tcpdump iproute2 nftables \
                pkg-config gcc python3 python3-dev libcap2-bin nfdump

# Everything the compiled modules are built from: a change here rebuilds them.
BUILD_INPUTS := pyproject.toml setup.py build_ffi.py $(wildcard cdef/*.h cdef/*.c cext/*.c)

.PHONY: all deps venv test test-matrix typecheck soak fuzz demo bench docs clean need-root

all: test

need-root:
	@if [ "$$(id -u)" != 0 ]; then \
	    echo "nfbind: 'make $(GOAL)' must run as root: it installs Debian packages and" >&2; \
	    echo "creates network namespaces and netfilter rules (needs CAP_NET_ADMIN)." >&2; \
	    echo "Run it again as root, e.g.: sudo make $(GOAL)" >&2; \
	    exit 1; \
	fi

deps:
	@missing=""; \
	for p in $(APT_PACKAGES); do \
	    dpkg-query -W -f='$${Status}\n' "$$p" 2>/dev/null | grep -q '^install ok installed$$' \
	        || missing="$$missing $$p"; \
	done; \
	for py in $(PYTHON) $(wildcard /usr/bin/python3); do \
	    if ! $$py -c 'import venv, ensurepip' >/dev/null 2>&1; then \
	        dpkg-query -W -f='$${Status}\n' python3-venv 2>/dev/null | grep -q '^install ok installed$$' \
	            || missing="$$missing python3-venv"; \
	        break; \
	    fi; \
	done; \
	if [ -z "$$missing" ]; then \
	    echo "deps: all Debian packages present"; \
	    exit 0; \
	fi; \
	if [ "$$(id -u)" != 0 ]; then \
	    echo "deps: missing Debian packages:$$missing" >&2; \
	    echo "deps: installing them needs root: sudo make deps" >&2; \
	    exit 1; \
	fi; \
	echo "deps: installing$$missing"; \
	export DEBIAN_FRONTEND=noninteractive; \
	apt-get update -qq && \
	apt-get install -y -qq --no-install-recommends $$missing >/dev/null

venv: $(STAMP)

$(VPY): | deps
	$(PYTHON) -m venv $(VENV)

# pip install -e builds the cffi modules (the core and each channel whose library is
# installed) into src/nfbind; build_ffi.py then recompiles in place with cffi's own
# dependency check, so an edited cdef/*.h or cdef/*.c always ends up in the .so files
# even when setuptools thinks the extension is up to date.
$(STAMP): $(VPY) $(BUILD_INPUTS) | deps
	$(VPY) -m pip install -q -e '.[test,scapy,dev,metrics]'
	$(VPY) build_ffi.py
	@touch $@

# A hung test must not hold CI until its own limit: after TEST_TIMEOUT seconds pytest
# gets SIGINT (fixtures still tear down their namespaces), 30 s later SIGKILL.
TEST_TIMEOUT ?= 1800

test: need-root deps venv
	timeout --signal=INT --kill-after=30 $(TEST_TIMEOUT) $(VPY) -m pytest -q tests

# The static types: [tool.mypy] in pyproject.toml (strict, Python 3.9, src/nfbind).
# The compiled modules' stubs (src/nfbind/_nf*.pyi) come from cdef/*.h:
# python tools/stubgen.py rewrites them, tests/test_stubs.py checks them.
typecheck: venv
	$(VPY) -m mypy

# nfbind built from its sdist (python -m build --sdist, once) and installed into a fresh
# venv of every supported interpreter this machine has (pyenv's and the system's), each
# then running the unit tests, one integration test per channel and the demo from outside
# the checkout; two interpreters at a time. It fails when any of them fails, or when a
# version the classifiers in pyproject.toml list has no interpreter here. Work files
# and one log per interpreter: build/matrix/. E.g. MATRIX_ARGS='--python /usr/bin/python3'.
MATRIX_TIMEOUT ?= 900

test-matrix: need-root deps venv
	timeout --signal=INT --kill-after=30 $(MATRIX_TIMEOUT) $(VPY) tests/matrix/run.py $(MATRIX_ARGS)

# The fault and load suite (tests marked 'fault') at full size: a million packets,
# 100,000 conntrack flows, 10,000 open/close cycles of each class.
SOAK_TIMEOUT ?= 5400

soak: need-root deps venv
	timeout --signal=INT --kill-after=30 $(SOAK_TIMEOUT) $(VPY) -m pytest -q -m fault --soak tests

# Each libFuzzer target runs FUZZ_SECONDS seconds over an AddressSanitizer build.
FUZZ_SECONDS ?= 60

fuzz: need-root deps venv
	bash fuzz/run.sh $(FUZZ_SECONDS)

demo: need-root deps venv
	$(VPY) -m nfbind demo

# One table of every benchmark (nfbind beside C, interleaved, 5 rounds, medians);
# e.g. make bench BENCH_ARGS='--quick' or BENCH_ARGS='--only nflog --json'.
bench: need-root deps venv
	$(VPY) benchmarks/bench.py $(BENCH_ARGS)

# The Sphinx site, warnings as errors.
docs: venv
	$(VPY) -m pip install -q -e '.[docs]'
	$(VPY) -m sphinx -W --keep-going -b html docs docs/_build/html

clean:
	rm -rf $(VENV) build dist .pytest_cache .hypothesis .mypy_cache benchmarks/bin
	rm -rf src/*.egg-info
	rm -f src/nfbind/_nfcore.c src/nfbind/_nfqueue.c src/nfbind/_nflog.c src/nfbind/_conntrack.c
	rm -f src/nfbind/_*.so src/nfbind/_*.o
	find . -path ./.git -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
