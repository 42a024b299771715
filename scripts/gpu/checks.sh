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

# 1. Correctness on the GPU: the tests whose shared tiny model then lives on CUDA (decoding, every pruning
#    method batched, cached and under both attention kernels), and the reference checks of the decoder.
ENTROPYPRUNE_TEST_DEVICE=cuda "$PYTHON" -m pytest -q tests/test_generation.py tests/test_baselines.py \
    tests/test_llama_reference.py 2>&1 | tail -n 3 | tee "$OUT/tests.txt"

# 1b. Host-device synchronisations inside one pruned prefill, per method (PyTorch's sync debug mode).
"$PYTHON" -m llava.bench.sync_check --arch tiny | tee "$OUT/sync.txt"

# 2. Our LlamaModel vs transformers' LlamaForCausalLM, full 32-layer 7B shapes, float16.
"$PYTHON" -m llava.bench.prefill_vs_hf --layers 32 --repeats 20 --device cuda | tee "$OUT/prefill_vs_hf.txt"

# 3. Token-entropy scoring: dual vs primal vs official on the GPU.
"$PYTHON" -m llava.bench.score --device cuda --json "$OUT/score.json" | tee "$OUT/score.txt"

# 4. Table 5 at full size: vanilla vs every in-LLM method at average 192 / 128 / 64, SDPA; then flash-attn
#    when it is installed.
"$PYTHON" -m llava.bench.efficiency --arch llava-1.5-7b --device cuda --dtype float16 --repeats 10 \
    --new-tokens 32 --methods entropy,fastv,dart,random --json "$OUT/efficiency.json" | tee "$OUT/efficiency.txt"
# 4b. The vision-stage methods, with the CLIP tower in the timed prefill (and EntropyPrune beside them).
"$PYTHON" -m llava.bench.efficiency --arch llava-1.5-7b --with-vision --device cuda --dtype float16 --repeats 10 \
    --new-tokens 32 --methods entropy,cdpruner,divprune,prumerge,prumerge_plus,visionzip,vispruner \
    --json "$OUT/efficiency_vision.json" | tee "$OUT/efficiency_vision.txt"
# 4c. LLaVA-NeXT-7B's language-model prefill for one 672x672 image (2928 visual tokens), the paper's Table 2
#     budgets (keep 640 / 320 / 160 after layer 2).
"$PYTHON" -m llava.bench.efficiency --arch llava-1.5-7b --image-size 672x672 --keeps 640,320,160 --device cuda \
    --dtype float16 --repeats 10 --new-tokens 32 --methods entropy,fastv,dart \
    --json "$OUT/efficiency_next.json" | tee "$OUT/efficiency_next.txt"
if "$PYTHON" -c "import flash_attn" 2>/dev/null; then
    "$PYTHON" -m llava.bench.efficiency --arch llava-1.5-7b --device cuda --dtype float16 --repeats 10 \
        --new-tokens 32 --methods entropy,fastv --attn-implementation flash_attention_2 \
        --json "$OUT/efficiency_flash.json" | tee "$OUT/efficiency_flash.txt"
fi

echo
echo "== summary ($(cat "$OUT/device.txt"))"
tail -n 1 "$OUT/prefill_vs_hf.txt"
grep -E "primal\(float64\)/dual" "$OUT/score.txt" || true
tail -n 12 "$OUT/efficiency.txt"
