# Two entry points for a fresh machine: `make demo` and `make test`. Each installs what it needs.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# A torch that is already installed is kept; otherwise this one is installed (CPU or CUDA build per platform).
TORCH_SPEC ?= torch==2.13.0
CKPT ?= checkpoints/llava-v1.5-tiny

.PHONY: install install-dev test lint demo demo-pipeline tiny clean

install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e .

install-dev:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[dev]"

test: install-dev
	$(PYTHON) -m ruff check llava entropyprune tests
	HF_HUB_OFFLINE=1 $(PYTHON) -m pytest -q

lint:
	$(PYTHON) -m ruff check llava entropyprune tests

$(CKPT)/config.json:
	HF_HUB_OFFLINE=1 $(PYTHON) -m llava.tools.make_tiny_checkpoint --out $(CKPT)

tiny: install $(CKPT)/config.json

# Demo benchmark data goes to its own folder so that it never mixes with real data in playground/data/eval.
DEMO_EVAL_ROOT ?= playground/data/eval-demo

$(DEMO_EVAL_ROOT)/.entropyprune-demo:
	$(PYTHON) -m llava.tools.make_demo_data --root $(DEMO_EVAL_ROOT)

# The demo: a tiny LLaVA trained on the synthetic colour task (shipped in playground/demo, reproduced by
# scripts/demo/train_colour_model.sh) answers its held-out MME-style set unpruned and pruned by each method at
# 192 / 128 / 64 kept tokens; one table of accuracy and prefill time, then one example answer. The held-out set is
# regenerated from its seed (a few seconds). One thread: faster than two on a shared 2-core machine.
DEMO_MODEL ?= playground/demo/llava-v1.5-tiny-colour
DEMO_COLOUR ?= playground/data/synthetic-colour

$(DEMO_COLOUR)/manifest.json:
	$(PYTHON) -m llava.tools.make_synthetic_data --out $(DEMO_COLOUR) --task colour --train 1 --test 50

demo: install $(DEMO_COLOUR)/manifest.json
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(PYTHON) -m llava.tools.demo --model-path $(DEMO_MODEL) \
		--mme-dir $(DEMO_COLOUR)/eval/MME/MME_Benchmark_release_version

# One question with and without pruning, then the whole MME pipeline (answers, scores, run record) with
# EntropyPrune on. The tiny checkpoint has 4 layers, not 32: AVG_TOKENS=192 would ask the 2 unpruned layers'
# 576 tokens each to average 192 over 4 layers, which no N can do, so the demo keeps N=166 after layer 2
# directly (what AVG_TOKENS=192 means on LLaVA-1.5-7B). Random weights rarely emit EOS, and MME answers
# are one word, so answers are capped at 16 tokens to keep the run to a minute or so on 2 CPU cores.
demo-pipeline: install $(CKPT)/config.json $(DEMO_EVAL_ROOT)/.entropyprune-demo
	HF_HUB_OFFLINE=1 $(PYTHON) -m llava.tools.demo --model-path $(CKPT)
	HF_HUB_OFFLINE=1 PYTHON=$(PYTHON) CKPT=$(notdir $(CKPT)) MODEL_PATH=$(CKPT) EVAL_ROOT=$(DEMO_EVAL_ROOT) \
		METHOD=entropy LAYER=2 KEEP=166 EVAL_ARGS="--max-new-tokens 16" \
		bash scripts/eval/mme.sh

clean:
	rm -rf checkpoints results .pytest_cache playground/data/eval-demo playground/data/synthetic-colour
