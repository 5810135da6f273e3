# x0tta6bl4 — everything a fresh machine needs is installed from here.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# make test runs the suite in this many pytest-xdist workers, one test file per worker at a time (most of the
# suite waits on real processes, so two workers on two cores halve its wall time); TEST_WORKERS=0 runs it serially
TEST_WORKERS ?= 2

.PHONY: setup ebpf-setup browser-setup proto demo up up-detached down secrets test test-unit test-under-load test-containers image compose-timing interop bench bench-mttr chaos lint clean help

help:
	@echo "make demo        set up and run one healed MAPE-K cycle on the embedded stack"
	@echo "make test        set up and run the test suite"
	@echo "make test-unit   the unit layer only (pytest -m unit: in-process, seconds)"
	@echo "make test-containers  docker compose up for real (a Docker engine, images built here): CI runs it too"
	@echo "make image       the images without a registry (Debian base, wheelhouse) and the compose secrets"
	@echo "make test-under-load  the suite with two busy CPU hogs beside it (tests/load.sh)"
	@echo "make lint        ruff, mypy on libs/ and the import contract (the domain does no I/O)"
	@echo "make up / down   run the embedded stack (secured: TLS, nkeys, permissions) / stop a detached one"
	@echo "make secrets     the deployment's secrets in var/secrets (meshctl secrets init; up and demo make them too)"
	@echo "make bench       benchmarks (ratios against raw baselines measured in the same run)"
	@echo "make bench-mttr  measured MTTR on a 50-node mesh"
	@echo "make chaos       a 30-minute soak of mixed faults on a real mesh, its invariants checked (MINUTES=2 to shorten)"
	@echo "make proto       regenerate Python code from proto/"
	@echo "make docs        regenerate docs/bus.md's and docs/security.md's tables and docs/asyncapi.yaml (subjects.py, permissions.py, protos)"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/pip install -q --disable-pip-version-check "torch==2.13.0"
	$(BIN)/pip install -q --disable-pip-version-check -e ".[dev,ml]"
	touch $(STAMP)

# Debian's bcc, kernel headers, tracefs, nftables; docker-compose (brings docker.io) and debootstrap (idempotent, quick when done; never fails the build)
ebpf-setup:
	-bash ebpf/setup.sh
	-{ command -v docker-compose && command -v debootstrap; } >/dev/null || { [ "$$(id -u)" = 0 ] && (apt-get install -y -q docker-compose debootstrap >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q docker-compose debootstrap >/dev/null)); }

# Debian's chromium for the dashboard's browser test (tests/e2e/test_dashboard.py, driven by Playwright, which
# downloads no browser); idempotent, quick when installed, never fails the build (the test says why it skips)
browser-setup:
	-@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && (apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null)); } || echo "browser-setup: chromium not installed (needs root and apt): the dashboard's browser test will skip"

# liboqs compiled to WebAssembly (npm @oqs/liboqs-js), cross-checked against our PQC in tests/integration/pqc
INTEROP := tools/liboqs-interop
$(INTEROP)/node_modules/.installed: $(INTEROP)/package-lock.json
	-command -v npm >/dev/null && cd $(INTEROP) && npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.installed

# contract tooling (npm @asyncapi/cli, @bufbuild/buf: tests/integration/contracts) and the Node.js client example
# (examples/node: docs/integrate.md, tests/integration/node_client)
CONTRACTS := tools/contracts
$(CONTRACTS)/node_modules/.installed: $(CONTRACTS)/package-lock.json
	-command -v npm >/dev/null && cd $(CONTRACTS) && npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.installed
NODE_EXAMPLE := examples/node
$(NODE_EXAMPLE)/node_modules/.installed: $(NODE_EXAMPLE)/package-lock.json
	-command -v npm >/dev/null && cd $(NODE_EXAMPLE) && npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.installed

interop: $(INTEROP)/node_modules/.installed $(CONTRACTS)/node_modules/.installed $(NODE_EXAMPLE)/node_modules/.installed

setup: $(STAMP) ebpf-setup browser-setup interop

proto: $(STAMP)
	$(BIN)/python tools/gen_proto.py

# docs/bus.md's tables from bus/subjects.py, docs/security.md's from bus/permissions.py, docs/asyncapi.yaml from
# both and the protos (a test fails when they differ)
.PHONY: docs
docs: $(STAMP)
	$(BIN)/python tools/gen_docs.py

demo: $(STAMP) ebpf-setup
	$(BIN)/meshctl demo

up: $(STAMP) ebpf-setup
	$(BIN)/meshctl up

up-detached: $(STAMP)
	$(BIN)/meshctl up --detach

down: $(STAMP)
	$(BIN)/meshctl down

secrets: $(STAMP)
	$(BIN)/meshctl secrets init

test: $(STAMP) ebpf-setup browser-setup interop
	$(BIN)/python -m pytest -q -ra --ignore=tests/containers -n $(TEST_WORKERS) --dist loadfile --durations=15 $(PYTEST_ARGS)

# docker compose up for real: builds the images (a Debian base when no registry answers), runs the secured
# stack in a Docker engine (started here, with its own data root, when none runs) and attacks/restarts it
test-containers: $(STAMP) ebpf-setup
	$(BIN)/python -m pytest -q -ra -s tests/containers $(PYTEST_ARGS)

# the images, without a registry if need be: base image, wheelhouse, secrets and .env, docker compose build
image: $(STAMP) ebpf-setup
	$(BIN)/python -m x0tta6bl4.runtime.images prepare

# how long `docker compose up` takes here: a cold build, a warm one, up until every container is healthy
compose-timing: $(STAMP) ebpf-setup
	$(BIN)/python -m x0tta6bl4.runtime.images timing

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q -m unit $(PYTEST_ARGS)

# the suite beside two CPU hogs (killed afterwards): what a busy 2-core CI machine does to timing
test-under-load: $(STAMP) ebpf-setup browser-setup interop
	PY=$(BIN)/python bash tests/load.sh $(PYTEST_ARGS)

# configured in pyproject.toml: [tool.ruff], [tool.mypy], [tool.importlinter]
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

bench: $(STAMP) ebpf-setup
	$(BIN)/python bench/run.py

bench-mttr: $(STAMP) ebpf-setup
	$(BIN)/python bench/bench_mttr.py

MINUTES ?= 30
chaos: $(STAMP)
	$(BIN)/python bench/chaos.py --minutes $(MINUTES)

clean:
	rm -rf var .pytest_cache
