# Everything a developer needs: `make run` serves the example policies, `make test` runs the tests.
# Both create the virtual environments they need on first use.

PYTHON ?= python3
VENV ?= .venv
WIRE_VENV ?= .venv-wire
BIN := $(VENV)/bin
POLICIES ?= policies

# Debian packages the targets below need are installed when missing, with sudo unless root.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# $(call apt_need,COMMAND:PACKAGE ...): install the packages of the commands not on PATH.
define apt_need
@missing=""; for pair in $(1); do \
  command -v "$${pair%%:*}" >/dev/null || missing="$$missing $${pair#*:}"; done; \
if [ -n "$$missing" ]; then \
  $(SUDO) apt-get update -qq && \
  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
fi
endef

.PHONY: setup run test test-tools proto lint bench bench-soak bench-reload bench-workers \
	bench-dispatch bench-gvisor wire-env clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,build]'
	touch $@

# The official Envoy protos (xds-protos) live in their own environment: they must never be imported
# in a process that also loads the project's generated code (same proto names, one descriptor pool).
$(WIRE_VENV)/.installed:
	$(PYTHON) -m venv $(WIRE_VENV)
	$(WIRE_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(WIRE_VENV)/bin/python -m pip install --quiet 'xds-protos>=1.74' 'grpcio>=1.74' 'grpcio-health-checking>=1.74'
	touch $@

setup: $(BIN)/.installed

wire-env: $(WIRE_VENV)/.installed

run: setup
	$(BIN)/authz-server serve --policies $(POLICIES)

# Debian packages the tests run for real, installed here when missing: redis-server backs the
# state store's Redis tests; chromium and chromium-driver drive the admin page (Selenium).
TEST_PACKAGES = redis-server:redis-server chromium:chromium chromedriver:chromium-driver
test-tools:
	$(call apt_need,$(TEST_PACKAGES))

test: setup wire-env test-tools
	AUTHZ_WIRE_PYTHON=$(abspath $(WIRE_VENV))/bin/python $(BIN)/python -m pytest

proto: setup
	$(BIN)/python tools/genproto.py

lint: setup
	$(BIN)/ruff check authz_server tests tools examples
	$(BIN)/ruff format --check authz_server tests tools examples

# h2load (Debian nghttp2-client) drives the gRPC load; installed here when missing. `make bench`
# measures the mixed workload (tests/benchmarks/run.py says what it prints); BENCH_ARGS passes
# options, e.g. BENCH_ARGS="--rounds 5 --requests 20000".
bench: setup
	$(call apt_need,h2load:nghttp2-client)
	$(BIN)/python -m tests.benchmarks.run $(BENCH_ARGS)

bench-soak: setup
	$(MAKE) bench BENCH_ARGS=--soak

bench-reload: setup
	$(MAKE) bench BENCH_ARGS=--reload

# Scaling over 1..N workers, servers on the first half of the cores and h2load on the other half:
# N defaults to half the cores.
BENCH_WORKERS ?= $(shell n=$$(nproc); echo $$(( n > 1 ? n / 2 : 1 )))
bench-workers: setup
	$(MAKE) bench BENCH_ARGS="--workers $(BENCH_WORKERS)"

# authz-server's --dispatch modes side by side with the bare servers and floor_server's aio-decide.
bench-dispatch: setup
	$(MAKE) bench BENCH_ARGS=--dispatch

# The benchmark inside gVisor (Debian's runsc, installed here when missing), the sandboxed kernel
# of GKE Sandbox and Cloud Run: servers and h2load together in one sandbox on its own loopback,
# ptrace platform. Everything is several times slower there, so fewer checks per run by default.
GVISOR_BENCH_ARGS ?= --dispatch --requests 2000
bench-gvisor: setup
	$(call apt_need,h2load:nghttp2-client runsc:runsc)
	$(SUDO) runsc -network=none do $(BIN)/python -m tests.benchmarks.run $(GVISOR_BENCH_ARGS)

clean:
	rm -rf $(VENV) $(WIRE_VENV) build *.egg-info .pytest_cache .ruff_cache
