# Two entry points for a fresh machine: `make demo` and `make test`. Each installs what it needs.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# A torch that is already installed is kept; otherwise this one is installed (CPU or CUDA build per platform).
TORCH_SPEC ?= torch==2.13.0
CKPT ?= checkpoints/llava-v1.5-tiny

.PHONY: install install-dev test lint demo tiny clean

install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e .

install-dev:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[dev]"

test: install-dev
	$(PYTHON) -m ruff check llava entropyprune tests
	HF_HUB_OFFLINE=1 $(PYTHON) -m pytest

lint:
	$(PYTHON) -m ruff check llava entropyprune tests

$(CKPT)/config.json:
	HF_HUB_OFFLINE=1 $(PYTHON) -m llava.tools.make_tiny_checkpoint --out $(CKPT)

tiny: install $(CKPT)/config.json

demo: install $(CKPT)/config.json
	HF_HUB_OFFLINE=1 $(PYTHON) -m llava.tools.demo --model-path $(CKPT)

clean:
	rm -rf checkpoints results .pytest_cache
