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
LOCK := server/requirements.lock
PIP_VERSION := 26.3
UV_VERSION := 0.13.9
GO ?= go
TOOLS_BIN := build/bin
# grpc-gateway: protoc-gen-openapiv2 (built with `go install` into build/bin) and its options
# protos (annotations.proto, openapiv2.proto), copied from the Go module cache: never the BSR.
GRPC_GATEWAY := github.com/grpc-ecosystem/grpc-gateway/v2
GRPC_GATEWAY_VERSION := v2.33.0
OPENAPI_OPTIONS := build/third_party/protoc-gen-openapiv2/options
OPENAPI_PLUGIN := $(TOOLS_BIN)/protoc-gen-openapiv2
OPENAPI_SPEC := api/openapi/inference/v1/inference_service.swagger.json
# Stubs for other languages (buf.gen.clients.yaml -> build/gen) and the two test clients built
# on them (clients/ -> build/clients): Go plugins by `go install` into build/bin, TypeScript from
# package.json.
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.0
GO_PLUGINS := $(TOOLS_BIN)/protoc-gen-go.$(PROTOC_GEN_GO_VERSION) \
	$(TOOLS_BIN)/protoc-gen-go-grpc.$(PROTOC_GEN_GO_GRPC_VERSION)
GO_CLIENT := build/clients/inference-client-go
TS_CLIENT := build/clients/ts/clients/ts/main.js

# The shared data folder (models, images) beside the repo; override to move it.
export INFERENCE_SHARED_DIR ?= $(abspath ../shared)

.PHONY: help setup protos openapi docs postman clients breaking lock lint check test test-unit test-integration test-e2e test-faults faults-long soak test-docker test-testcontainers docker-images fuzz run bench clean console-screenshots

help:
	@echo "make run      set up and start Cassandra, the server and Envoy (Ctrl-C stops all)"
	@echo "make check    the fast loop: ruff, mypy (strict) and the unit tests; Python only, < 1 min warm"
	@echo "make test     set up and run every test (unit, integration, e2e, faults, fuzz, docker)"
	@echo "make protos   lint the API and regenerate the Python stubs and Envoy's descriptor"
	@echo "make openapi  regenerate api/openapi/ (the committed OpenAPI description)"
	@echo "make docs     regenerate docs/settings.md (the settings reference) from the settings classes"
	@echo "make postman  the Postman collection of the REST API (build/postman/), from the OpenAPI file"
	@echo "make lint     ruff + buf lint"
	@echo "make fuzz     property-based fuzzing of the gRPC and REST APIs, 10,000 cases a test"
	@echo "make bench    benchmarks against the local stack"
	@echo "make faults-long  the fault tests with the long ones (3-node history checker)"
	@echo "make soak     a long run (SOAK_MINUTES, default 30) with leak and drift figures"
	@echo "make docker-images  a Docker engine and every image, built here without a registry"
	@echo "make lock     re-resolve and pin the Python dependencies (server/requirements.lock)"
	@echo "make console-screenshots  regenerate docs/console.png (the web console, from its browser test)"

setup: $(VENV)/.installed node_modules/.installed build/.compose-schema $(OPENAPI_PLUGIN).$(GRPC_GATEWAY_VERSION) clients

# compose.yaml is validated against the compose-spec schema that compose-go ships
# (from the Go module proxy); without Go that one test is skipped.
COMPOSE_GO := github.com/compose-spec/compose-go/v2@v2.16.2
build/.compose-schema:
	mkdir -p build
	if command -v go >/dev/null; then go mod download $(COMPOSE_GO); else echo "go not found: compose.yaml schema test will be skipped"; fi
	touch $@

# Dependencies first; the package itself is installed (editable) again once the
# stubs exist, so that its import finder maps the generated `inference` package.
# Every Python dependency comes pinned from the lock (`make lock` writes it).
$(VENV)/.deps: server/pyproject.toml clients/python/pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet pip==$(PIP_VERSION)
	$(PY) -m pip install --quiet -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps -e server -e clients/python
	touch $@

# Resolve the Python dependencies (server/pyproject.toml with its dev extra, and the client's
# clients/python/pyproject.toml, under
# server/constraints.txt) again and pin them all in server/requirements.lock: the one command to
# run after changing a dependency (then commit the lock).
lock:
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet uv==$(UV_VERSION)
	rm -f $(LOCK)
	$(VENV)/bin/uv pip compile server/pyproject.toml clients/python/pyproject.toml --extra dev --constraint server/constraints.txt \
	  --python $(PY) --python-platform x86_64-manylinux_2_36 --no-header --quiet \
	  --output-file $(LOCK)

$(VENV)/.installed: $(VENV)/.deps server/gen/.generated
	$(PY) -m pip install --quiet --no-deps -e server -e clients/python
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

# google/api protos come from the installed googleapis-common-protos (no BSR).
$(THIRD_PARTY)/.copied: $(VENV)/.deps
	mkdir -p $(THIRD_PARTY)
	cp $(GOOGLEAPIS)/annotations.proto $(GOOGLEAPIS)/http.proto $(GOOGLEAPIS)/field_behavior.proto \
	   $(GOOGLEAPIS)/httpbody.proto $(THIRD_PARTY)/
	touch $@

$(OPENAPI_OPTIONS)/.copied:
	mkdir -p $(OPENAPI_OPTIONS)
	dir="$$($(GO) mod download -json $(GRPC_GATEWAY)@$(GRPC_GATEWAY_VERSION) \
	  | $(PYTHON) -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')" \
	  && install -m 644 "$$dir/protoc-gen-openapiv2/options/annotations.proto" \
	       "$$dir/protoc-gen-openapiv2/options/openapiv2.proto" $(OPENAPI_OPTIONS)/
	touch $@

$(OPENAPI_PLUGIN).$(GRPC_GATEWAY_VERSION):
	GOBIN=$(abspath $(TOOLS_BIN)) $(GO) install $(GRPC_GATEWAY)/protoc-gen-openapiv2@$(GRPC_GATEWAY_VERSION)
	touch $@

protos: server/gen/.generated $(VENV)/.installed

# The OpenAPI (Swagger 2.0) description of the REST API, committed: regenerate it after
# changing the protos (a test fails while it is stale).
openapi: $(OPENAPI_SPEC)

# The settings reference (docs/settings.md), generated from the settings classes' field
# docstrings, committed: regenerate it after changing a setting (a unit test fails while it
# is stale). Needs only the virtualenv.
docs: $(VENV)/.deps
	$(PY) tools/settings_reference.py

$(OPENAPI_SPEC): $(PROTOS) buf.gen.openapi.yaml $(OPENAPI_PLUGIN).$(GRPC_GATEWAY_VERSION) server/gen/.generated
	$(BUF) generate --template buf.gen.openapi.yaml
	$(PY) tools/openapi_raw_bodies.py $@
	touch $@

# The Postman collection of the REST API (import it into Postman, or run it with newman), made
# from the committed OpenAPI file by openapi-to-postmanv2 and fixed for use by
# tools/postman-collection.mjs (one id for every request, the `{id}:render` URL, the base URL).
# Not committed: made on demand from the spec, which is.
POSTMAN_COLLECTION := build/postman/inference-service.postman_collection.json
postman: $(POSTMAN_COLLECTION)

$(POSTMAN_COLLECTION): $(OPENAPI_SPEC) tools/postman-collection.mjs node_modules/.installed
	node tools/postman-collection.mjs $(OPENAPI_SPEC) $@

$(TOOLS_BIN)/protoc-gen-go.$(PROTOC_GEN_GO_VERSION):
	GOBIN=$(abspath $(TOOLS_BIN)) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	touch $@

$(TOOLS_BIN)/protoc-gen-go-grpc.$(PROTOC_GEN_GO_GRPC_VERSION):
	GOBIN=$(abspath $(TOOLS_BIN)) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	touch $@

clients: $(GO_CLIENT) $(TS_CLIENT)

build/gen/.generated: $(PROTOS) buf.gen.clients.yaml $(GO_PLUGINS) node_modules/.installed server/gen/.generated
	$(BUF) generate --template buf.gen.clients.yaml
	printf 'module github.com/inference-service/api/gen/go\n\ngo 1.24\n' > build/gen/go/go.mod
	printf '{"type": "module"}\n' > build/gen/ts/package.json
	touch $@

$(GO_CLIENT): build/gen/.generated clients/go/main.go clients/go/go.mod clients/go/go.sum
	cd clients/go && $(GO) build -trimpath -o $(abspath $@) .

$(TS_CLIENT): build/gen/.generated clients/ts/main.ts clients/ts/tsconfig.json clients/ts/package.json
	node_modules/.bin/tsc -p clients/ts
	printf '{"type": "module"}\n' > build/clients/ts/package.json

# buf breaking: the API against the previous commit's (HEAD~1; on main, the main before the
# merge), with the same vendored imports. A breaking change to the contract fails here.
breaking: server/gen/.generated
	rm -rf build/breaking && mkdir -p build/breaking/build
	if git rev-parse -q --verify HEAD~1 >/dev/null; then \
	  git archive HEAD~1 api buf.yaml | tar -x -C build/breaking \
	  && cp -r build/third_party build/breaking/build/ \
	  && $(BUF) breaking --against build/breaking; \
	else echo "no previous commit: buf breaking skipped"; fi

server/gen/.generated: $(PROTOS) buf.yaml buf.gen.yaml tools/protoc-gen-grpc_python $(THIRD_PARTY)/.copied $(OPENAPI_OPTIONS)/.copied node_modules/.installed $(VENV)/.deps
	$(BUF) lint
	$(BUF) generate
	mkdir -p $(dir $(DESCRIPTOR))
	$(BUF) build -o $(DESCRIPTOR)
	touch $@

# ruff over the whole tree (server, clients, bench, devstack, docker, tools, tests; settings in
# the root pyproject.toml), and buf lint.
RUFF_PATHS := . tools/protoc-gen-grpc_python
lint: setup
	$(VENV)/bin/ruff check $(RUFF_PATHS)
	$(VENV)/bin/ruff format --check $(RUFF_PATHS)
	$(BUF) lint

# The fast loop, run before every commit (.pre-commit-config.yaml) and first in CI: ruff, mypy
# (strict on inference_service and inference_client; settings in pyproject.toml) and the unit
# tests. It runs Python tools only (no Go, Node or Cassandra), once the virtualenv and the
# generated stubs exist (the first `make setup` or `make protos` makes them). Under a minute on
# a warm machine (docs/testing.md).
check: $(VENV)/.installed
	$(VENV)/bin/ruff check $(RUFF_PATHS)
	$(VENV)/bin/ruff format --check $(RUFF_PATHS)
	$(PY) -m mypy
	$(PY) -m pytest tests/unit -q

# Every test; tests/docker (the compose stack) runs last and is skipped without a Docker engine
# and the images of `make docker-images` (a failure with INFERENCE_TEST_DOCKER=required, as in
# CI); where they are there, the testcontainers path runs after it. pytest ends with the time
# each layer took (tests/support/layer_timing.py; the budget is in docs/testing.md).
test: setup breaking
	$(PY) -m pytest tests
	@if [ "$$INFERENCE_TEST_DOCKER" = required ] || $(PY) -m devstack.docker status --require-images >/dev/null 2>&1; then \
	  start=$$(date +%s) && $(MAKE) --no-print-directory test-testcontainers \
	  && echo "testcontainers path: $$(( $$(date +%s) - start )) s"; \
	else echo "testcontainers path skipped: no Docker engine or images (make docker-images)"; fi

test-unit: setup
	$(PY) -m pytest tests/unit

test-integration: setup
	$(PY) -m pytest tests/integration

test-e2e: setup
	$(PY) -m pytest tests/e2e

test-faults: setup
	$(PY) -m pytest tests/faults

test-docker: setup
	$(PY) -m pytest tests/docker

# The long fault tests (not in make test): the history checker on a 3-node cluster with node
# kills, server pauses and kills, and every other fault test beside it.
faults-long: setup
	INFERENCE_FAULTS_LONG=1 $(PY) -m pytest tests/faults

# A long run at a fixed share of the Invoke rate with a realistic mix (bench/soak.py): errors by
# code, p50/p99, server RSS and open files per minute with their slopes, the store's size.
# SOAK_ARGS=--ci judges only what a short run can decide (errors by code, file descriptors).
SOAK_MINUTES ?= 30
SOAK_ARGS ?=
soak: setup
	$(PY) -m bench.soak --minutes $(SOAK_MINUTES) $(SOAK_ARGS)

# The store contract suite and the server tests against a Cassandra container (testcontainers:
# the image of `make docker-images` on the host's network, else the official one).
test-testcontainers: setup
	INFERENCE_TEST_CASSANDRA=testcontainers $(PY) -m pytest tests/integration/test_cassandra_endpoint.py tests/integration/test_store_contract.py tests/integration/test_grpc_server.py

# Docker without a registry (devstack/docker.py): an engine (dockerd started, and installed with
# apt as root, when none answers; `python -m devstack.docker stop` stops it), the compose plugin
# (built with Go when missing), a debootstrap base and every image compose.airgap.yaml, the
# docker tests and the testcontainers path use. Idempotent; a second run is quick (build cache).
docker-images:
	$(PYTHON) -m devstack.docker images

# The fuzz tests also run in `make test`, with a few hundred cases each (profile "quick").
fuzz: setup
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest tests/fuzz tests/e2e/test_rest_fuzz.py -m fuzz -rA --timeout=3600

run: setup
	$(PY) -m devstack run

# The README's picture of the web console (docs/console.png): the browser test's screenshot of
# the detail view (build/console/detail.png, written by tests/e2e/test_console.py), made small.
console-screenshots: setup
	$(PY) -m pytest tests/e2e/test_console.py -k upload_browse -p no:cacheprovider
	$(PY) -c 'from PIL import Image; \
	  shot = Image.open("build/console/detail.png").convert("RGB"); \
	  shot = shot.resize((960, round(shot.height * 960 / shot.width)), Image.Resampling.LANCZOS); \
	  shot.quantize(colors=96, method=Image.Quantize.MEDIANCUT).save("docs/console.png", optimize=True)'
	@ls -l docs/console.png

# make bench (not part of make test): tools first, idempotently, all bench-only: bench-ghz (ghz's
# runner, built with Go from bench/ghzload), wrk (Debian), MLServer in build/bench/mlserver-venv.
# Then bench/run.py (`$(PY) -m bench --help`; pass options with BENCH_ARGS='...').
bench: setup
	test build/bench/bin/bench-ghz -nt bench/ghzload/main.go -a build/bench/bin/bench-ghz -nt bench/ghzload/openloop.go \
	  -a build/bench/bin/bench-ghz -nt bench/ghzload/go.sum \
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
