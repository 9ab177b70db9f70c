# Everything runs from a fresh clone with only Python >= 3.11 and make installed:
# the first target that needs the environment creates .venv and installs into it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
STAMP  := $(VENV)/.installed
PROTOS := $(wildcard protos/allocation/v1/*.proto)
# The engine's modules compiled with mypyc (controller.native; listed in controller.compiled).
NATIVE := controller/native.json
NATIVE_SOURCES := $(addprefix controller/,domain.py waterfill.py book.py lots.py)
# The released contract: `buf breaking` checks every change against it, so v1 only grows.
RELEASED := released/allocation-v1.json

# Overridable demo settings for `make run` (see README).
export REPORT_INTERVAL ?= 10
export SPLIT_INTERVAL  ?= 30
export FILL_RATE       ?= 1
export ACCOUNTS        ?= 5
export FILL_SERVERS    ?= 1
export CONTROLLER_PORT ?= 9998
export POSITION_PORT   ?= 9999
# The position service's web dashboard: http://127.0.0.1:$(DASHBOARD_PORT)/
export DASHBOARD_PORT  ?= 8080
# Development certificates (`make certs`): every link of `make run` uses mutual TLS with them
# and the policy beside them; `make run TLS=0` runs the demo in plaintext instead.
export CERTS ?= var/certs
TLS ?= 1
ifeq ($(TLS),0)
export POSITION_SECURITY :=
export CONTROLLER_SECURITY :=
export AUM_SECURITY :=
export FILLS_SECURITY :=
RUN_NEEDS :=
else
client_tls = --tls-ca $(CERTS)/ca.pem --tls-cert $(CERTS)/$(1).pem --tls-key $(CERTS)/$(1).key
server_tls = --tls-cert $(CERTS)/$(1).pem --tls-key $(CERTS)/$(1).key \
	--tls-client-ca $(CERTS)/ca.pem --auth-policy $(CERTS)/policy.toml
export POSITION_SECURITY := $(call server_tls,position)
export CONTROLLER_SECURITY := $(call server_tls,controller) --position-tls-ca $(CERTS)/ca.pem \
	--position-tls-cert $(CERTS)/controller.pem --position-tls-key $(CERTS)/controller.key
export AUM_SECURITY := $(call client_tls,aum)
export FILLS_SECURITY := $(call client_tls,venue-1)
RUN_NEEDS := $(CERTS)/ca.pem
endif

.PHONY: all venv native protos check-protos lint test run bench clean release-contract certs \
	screenshot

all: test

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Python >= 3.11 is required ($(PYTHON) is too old)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# Rebuilt whenever a compiled module's source changes (importing a build that no longer matches
# its sources fails, so it is removed first); without a C compiler the engine runs from source.
$(NATIVE): $(STAMP) $(NATIVE_SOURCES) controller/native.py controller/compiled.py
	rm -f controller/*.so
	$(PY) -m controller.native

native: $(NATIVE)

# Regenerates the committed stubs: messages, gRPC services and typed .pyi stubs (mypy-protobuf).
protos: $(STAMP)
	rm -rf generated/allocation
	mkdir -p generated
	PATH="$(CURDIR)/$(BIN):$$PATH" $(PY) -m grpc_tools.protoc -I protos \
		--python_out=generated --grpc_python_out=generated \
		--mypy_out=generated --mypy_grpc_out=generated $(PROTOS)
	touch generated/allocation/__init__.py generated/allocation/v1/__init__.py \
		generated/allocation/py.typed

# Fails when the committed stubs differ from what the pinned tools generate.
check-protos: protos
	@git diff --exit-code --stat -- generated/ && \
	 test -z "$$(git status --porcelain --untracked-files=all -- generated/)" || \
	 { echo "generated/ is stale: run 'make protos' and commit the result"; exit 1; }

lint: $(STAMP)
	cd protos && ../$(BIN)/buf lint && ../$(BIN)/buf format --diff --exit-code
	cd protos && ../$(BIN)/buf breaking --against $(RELEASED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: check-protos lint $(NATIVE)
	$(BIN)/pytest -q

run: $(STAMP) $(NATIVE) $(RUN_NEEDS)
	$(BIN)/honcho -f Procfile start

# A throwaway CA, certificates for every program and a reader/admin, and their policy.
certs: $(STAMP)
	$(PY) -m controller.devcerts $(CERTS)

$(CERTS)/ca.pem: | $(STAMP)
	$(PY) -m controller.devcerts $(CERTS)

# Only when a new contract version is released on purpose: the image `make lint` checks against.
release-contract: $(STAMP)
	cd protos && ../$(BIN)/buf build --exclude-source-info -o $(RELEASED)

bench: $(STAMP) $(NATIVE)
	$(PY) -m benchmarks

# Retakes the README's picture, docs/dashboard.png, in the browser test (other runs leave it).
screenshot: $(STAMP) $(NATIVE)
	DASHBOARD_SCREENSHOT=$(CURDIR)/docs/dashboard.png $(BIN)/pytest -q tests/test_dashboard.py \
		-k real_browser

clean:
	rm -rf $(VENV) var controller/*.so $(NATIVE) .pytest_cache .mypy_cache .ruff_cache .hypothesis build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
