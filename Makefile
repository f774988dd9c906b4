# lil-sparse: every command the README tells you to run is a target here.
#
#   make run     install the runtime (CPU torch without a GPU) and serve the default model
#                (SmolLM2-135M-Instruct) on :50051
#   make test    install the runtime plus the dev and Helm-test tools, and run the whole test
#                suite (Python, Go client, Helm chart)
#   make gateway the SMG gateway's OpenAI API on :30000 in front of `make run`
#   make help    every target, one line each

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed first, so that the "torch>=2.4" dependency is already satisfied and pip
# never pulls a multi-GB CUDA build onto a machine without a GPU:
#  1. a wheel pip finds without any index (a --find-links folder from pip's config, as on the CI
#     machine, which holds the CPU build and may have no network) is used as it is;
#  2. else, without an NVIDIA GPU (no nvidia-smi), the CPU build from TORCH_INDEX, an extra index
#     beside PyPI (its "2.13.0+cpu" sorts above PyPI's CUDA "2.13.0", so pip picks it);
#  3. else PyPI's default (CUDA) build. Override with TORCH_INDEX=... (empty: PyPI only).
TORCH ?= torch==2.13.0
TORCH_INDEX ?= $(if $(shell command -v nvidia-smi 2>/dev/null),,https://download.pytorch.org/whl/cpu)
MODEL ?= smollm2-135m-instruct
PORT ?= 50051
METRICS_PORT ?= 9400
GATEWAY_PORT ?= 30000

.PHONY: help install install-runtime install-torch run serve gateway generate client test test-python test-go test-helm lint format typecheck \
        proto go-proto go-deps bench-micro bench-e2e clean

help:
	@echo "make run          install the runtime and serve $(MODEL) on :$(PORT) (metrics :$(METRICS_PORT))"
	@echo "make serve        serve without installing"
	@echo "make generate     one request through the CLI, no server"
	@echo "make client       one request to the running server through lil-client"
	@echo "make gateway      the SMG gateway's OpenAI API on :$(GATEWAY_PORT) in front of the server"
	@echo "make install      the runtime plus the dev and Helm-test tools"
	@echo "make test         install, then every test (Python, Go client, Helm chart)"
	@echo "make test-python  the Python tests; a subset: make test-python TESTS='-k smg' or TESTS=tests/engine"
	@echo "make test-go      the Go client's tests against the real Python server"
	@echo "make test-helm    the Helm chart's tests alone"
	@echo "make lint / format / typecheck   ruff and mypy (they install the dev tools first if missing)"
	@echo "make proto / go-proto            regenerate the Python / Go gRPC stubs"
	@echo "make go-deps      the Go toolchain and modules the Go client's tests need"
	@echo "make bench-micro  the attention micro-benchmark; make bench-e2e: the decode benchmark (GPU)"
	@echo "make install-runtime / install-torch   what make run installs / torch alone"
	@echo "make clean        remove the venv and the build and tool caches"

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

install-torch: $(PY)
	$(PY) -m pip install -q --no-index --no-deps "$(TORCH)" 2>/dev/null \
		|| $(PY) -m pip install -q "$(TORCH)" $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
	$(PY) -m pip install -q "$(TORCH)"

# What `make run` needs: the package and its runtime dependencies.
install-runtime: install-torch
	$(PY) -m pip install -q -e .

# Everything: the runtime, the dev tools (pytest, ruff, mypy, smg...) and the Helm test tools.
install: install-torch
	$(PY) -m pip install -q -e ".[dev]" -r requirements-helm-test.txt

run: install-runtime serve

serve:
	$(VENV)/bin/lil-sparse models fetch $(MODEL)
	$(VENV)/bin/lil-sparse serve --model $(MODEL) --port $(PORT) --metrics-port $(METRICS_PORT)

# The SMG gateway (OpenAI HTTP on GATEWAY_PORT) in front of the server `make serve` started.
gateway: $(VENV)/bin/smg
	$(VENV)/bin/smg launch --worker-urls grpc://127.0.0.1:$(PORT) --port $(GATEWAY_PORT) --policy round_robin

generate:
	$(VENV)/bin/lil-sparse generate --model $(MODEL) --policy quest --budget 64 --max-new-tokens 128 \
		"What is 17 * 23? Answer briefly."

client:
	$(VENV)/bin/lil-client --address localhost:$(PORT) generate "Write a haiku about sparse attention." \
		--policy quest --budget 128 --guardian --guardian-interval 50

# Both suites run even when the first fails; the target fails if either did.
test: install go-deps
	@status=0; $(MAKE) --no-print-directory test-python || status=1; \
	$(MAKE) --no-print-directory test-go || status=1; exit $$status

TESTS ?=
test-python: $(VENV)/bin/pytest
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -ra $(TESTS)

test-helm: $(VENV)/bin/pytest
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -ra tests/helm

go-deps:
	bash scripts/go-deps.sh

test-go:
	cd client/go && LIL_SPARSE_PYTHON=$(CURDIR)/$(PY) ./check.sh

# The dev tools (the SMG gateway among them) come with `make install`; `make run` installs only
# the runtime, so the targets that need one install them first.
$(VENV)/bin/ruff $(VENV)/bin/mypy $(VENV)/bin/pytest $(VENV)/bin/smg:
	$(MAKE) --no-print-directory install

lint: $(VENV)/bin/ruff
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(VENV)/bin/ruff
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

typecheck: $(VENV)/bin/mypy
	$(VENV)/bin/mypy lil_sparse server eval client/python/lil_client
	$(VENV)/bin/mypy --explicit-package-bases bench

proto:
	$(PY) client/python/gen_proto.py

go-proto:
	cd client/go && ./genproto.sh

bench-micro:
	$(PY) bench/attention_micro.py

bench-e2e:
	$(PY) bench/decode_e2e.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
