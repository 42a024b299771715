#!/usr/bin/env bash
# The GPU checks and benchmarks in one go, for a machine with a CUDA GPU (no weights or data needed:
# random weights of LLaVA-1.5-7B's architecture). Writes everything under $OUT (default gpu-results/)
# and prints a short summary last. Numbers measured here belong in docs/ with the GPU's name.
#   bash scripts/gpu/checks.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PYTHON=${PYTHON:-python3}
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU visible'; \
print(torch.cuda.get_device_name(0), 'torch', torch.__version__)" | tee "$OUT/device.txt"

# 1. Correctness on the GPU: the CPU test suite's reference checks, plus half-precision runs of the tiny model.
"$PYTHON" -m pytest -q tests/test_llama_reference.py tests/test_prune_hook.py 2>&1 | tail -n 3 | tee "$OUT/tests.txt"

# 2. Our LlamaModel vs transformers' LlamaForCausalLM, full 32-layer 7B shapes, float16.
"$PYTHON" -m llava.bench.prefill_vs_hf --layers 32 --repeats 20 --device cuda | tee "$OUT/prefill_vs_hf.txt"

# 3. Token-entropy scoring: dual vs primal vs official on the GPU.
"$PYTHON" -m llava.bench.score --device cuda --json "$OUT/score.json" | tee "$OUT/score.txt"

# 4. Table 5 at full size: vanilla vs EntropyPrune at average 192 / 128 / 64, SDPA (and flash-attn if installed).
"$PYTHON" -m llava.bench.efficiency --arch llava-1.5-7b --device cuda --dtype float16 --repeats 10 \
    --new-tokens 32 --methods entropy,random --json "$OUT/efficiency.json" | tee "$OUT/efficiency.txt"

echo
echo "== summary ($(cat "$OUT/device.txt"))"
tail -n 1 "$OUT/prefill_vs_hf.txt"
grep -E "primal\(float64\)/dual" "$OUT/score.txt" || true
tail -n 12 "$OUT/efficiency.txt"
