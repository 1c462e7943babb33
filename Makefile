# inference-service: one entry point for setup, code generation, the stack, tests and benchmarks.
# Every target that needs the virtualenv, node tools or stubs sets them up first (idempotent).

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
BUF := node_modules/.bin/buf
SITE := $(shell $(PYTHON) -c 'import sys; print(f"python{sys.version_info[0]}.{sys.version_info[1]}")' 2>/dev/null)
GOOGLEAPIS := $(VENV)/lib/$(SITE)/site-packages/google/api
THIRD_PARTY := build/third_party/google/api
DESCRIPTOR := build/protos/descriptor.binpb
PROTOS := $(shell find api -name '*.proto')

# The shared data folder (models, images) beside the repo; override to move it.
export INFERENCE_SHARED_DIR ?= $(abspath ../shared)

.PHONY: help setup protos lint test test-unit test-integration test-e2e test-faults fuzz run bench clean

help:
	@echo "make run      set up and start Cassandra, the server and Envoy (Ctrl-C stops all)"
	@echo "make test     set up and run every test (unit, integration, e2e)"
	@echo "make protos   lint the API and regenerate the Python stubs and Envoy's descriptor"
	@echo "make lint     ruff + buf lint"
	@echo "make fuzz     property-based fuzzing of the gRPC and REST APIs, 10,000 cases a test"
	@echo "make bench    benchmarks against the local stack"

setup: $(VENV)/.installed node_modules/.installed build/.compose-schema

# compose.yaml is validated against the compose-spec schema that compose-go ships
# (from the Go module proxy); without Go that one test is skipped.
COMPOSE_GO := github.com/compose-spec/compose-go/v2@v2.16.2
build/.compose-schema:
	mkdir -p build
	if command -v go >/dev/null; then go mod download $(COMPOSE_GO); else echo "go not found: compose.yaml schema test will be skipped"; fi
	touch $@

# Dependencies first; the package itself is installed (editable) again once the
# stubs exist, so that its import finder maps the generated `inference` package.
$(VENV)/.deps: server/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e 'server[dev]'
	touch $@

$(VENV)/.installed: $(VENV)/.deps server/gen/.generated
	$(PY) -m pip install --quiet --no-deps -e server
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# google/api protos come from the installed googleapis-common-protos (no BSR).
$(THIRD_PARTY)/.copied: $(VENV)/.deps
	mkdir -p $(THIRD_PARTY)
	cp $(GOOGLEAPIS)/annotations.proto $(GOOGLEAPIS)/http.proto $(GOOGLEAPIS)/field_behavior.proto $(THIRD_PARTY)/
	touch $@

protos: server/gen/.generated $(VENV)/.installed

server/gen/.generated: $(PROTOS) buf.yaml buf.gen.yaml tools/protoc-gen-grpc_python $(THIRD_PARTY)/.copied node_modules/.installed $(VENV)/.deps
	$(BUF) lint
	$(BUF) generate
	mkdir -p $(dir $(DESCRIPTOR))
	$(BUF) build -o $(DESCRIPTOR)
	touch $@

lint: setup
	$(VENV)/bin/ruff check server/src tests tools/protoc-gen-grpc_python
	$(VENV)/bin/ruff format --check server/src tests
	$(BUF) lint

test: setup
	$(PY) -m pytest tests

test-unit: setup
	$(PY) -m pytest tests/unit

test-integration: setup
	$(PY) -m pytest tests/integration

test-e2e: setup
	$(PY) -m pytest tests/e2e

test-faults: setup
	$(PY) -m pytest tests/faults

# The fuzz tests also run in `make test`, with a few hundred cases each (profile "quick").
fuzz: setup
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest tests/fuzz tests/e2e/test_rest_fuzz.py -m fuzz -rA --timeout=3600

run: setup
	$(PY) -m inference_service.devstack run

# make bench (not part of make test): tools first, idempotently, all bench-only: bench-ghz (ghz's
# runner, built with Go from bench/ghzload), wrk (Debian), MLServer in build/bench/mlserver-venv.
# Then bench/run.py (`$(PY) -m bench --help`; pass options with BENCH_ARGS='...').
bench: setup
	test build/bench/bin/bench-ghz -nt bench/ghzload/main.go -a build/bench/bin/bench-ghz -nt bench/ghzload/go.sum \
	  || (cd bench/ghzload && go build -trimpath -o ../../build/bench/bin/bench-ghz .)
	command -v wrk >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk)
	test build/bench/mlserver-venv/.installed -nt bench/requirements-mlserver.txt \
	  || ($(PYTHON) -m venv build/bench/mlserver-venv \
	      && build/bench/mlserver-venv/bin/pip install --quiet --upgrade pip \
	      && build/bench/mlserver-venv/bin/pip install --quiet -r bench/requirements-mlserver.txt \
	      && touch build/bench/mlserver-venv/.installed)
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf build server/gen
