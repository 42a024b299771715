#!/usr/bin/env bash
# Table 5 (efficiency) on MME-style inputs: vanilla vs EntropyPrune at average budgets 192 / 128 / 64.
#   MODEL_PATH=liuhaotian/llava-v1.5-7b bash scripts/eval/efficiency.sh     # a checkpoint, MME questions
#   bash scripts/eval/efficiency.sh                                         # random weights, nothing downloaded
#   bash scripts/eval/efficiency.sh --with-vision --profile                 # extra flags go to the benchmark
#
# With MODEL_PATH set and $EVAL_ROOT/MME/llava_mme.jsonl present, the first NUM_QUESTIONS MME questions are
# the prompts (images from MME_Benchmark_release_version; a random image stands in for a missing one).
# Otherwise (no checkpoint means no tokenizer) it times random prompts of TEXT_TOKENS tokens (62, an MME
# prompt) on random weights of ARCH: llava-1.5-7b-cpu on a CPU (7B widths, 6 layers), llava-1.5-7b on a GPU.
# This script does not source _common.sh: that one defaults MODEL_PATH to a download, and an unset
# MODEL_PATH means random-prompt mode here.
#
# Environment (all optional): MODEL_PATH, ARCH, REPEATS (5), NEW_TOKENS (4), NUM_QUESTIONS (10),
# METHODS (entropy), BUDGETS (192,128,64), TEXT_TOKENS (62), DEVICE (cuda when available),
# EVAL_ROOT (./playground/data/eval), RESULTS_DIR (./results), OUT ($RESULTS_DIR/efficiency.json), PYTHON.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

PYTHON=${PYTHON:-python}
EVAL_ROOT=${EVAL_ROOT:-./playground/data/eval}
RESULTS_DIR=${RESULTS_DIR:-./results}
OUT=${OUT:-$RESULTS_DIR/efficiency.json}
QUESTIONS=$EVAL_ROOT/MME/llava_mme.jsonl
mkdir -p "$(dirname "$OUT")"

args=(--repeats "${REPEATS:-5}" --new-tokens "${NEW_TOKENS:-4}" --methods "${METHODS:-entropy}"
      --budgets "${BUDGETS:-192,128,64}" --json "$OUT")
[[ -n "${DEVICE:-}" ]] && args+=(--device "$DEVICE")

if [[ -n "${MODEL_PATH:-}" ]]; then
    args+=(--model-path "$MODEL_PATH")
    if [[ -f "$QUESTIONS" ]]; then
        args+=(--questions "$QUESTIONS" --num-questions "${NUM_QUESTIONS:-10}"
               --image-folder "$EVAL_ROOT/MME/MME_Benchmark_release_version")
    else
        echo "note: $QUESTIONS not found; timing random prompts of ${TEXT_TOKENS:-62} text tokens" >&2
        args+=(--text-tokens "${TEXT_TOKENS:-62}")
    fi
else
    [[ -n "${ARCH:-}" ]] && args+=(--arch "$ARCH")
    if [[ -f "$QUESTIONS" ]]; then
        echo "note: random weights have no tokenizer, so $QUESTIONS is not read (set MODEL_PATH to use it)" >&2
    fi
    args+=(--text-tokens "${TEXT_TOKENS:-62}")
fi

"$PYTHON" -m llava.bench.efficiency "${args[@]}" "$@"
