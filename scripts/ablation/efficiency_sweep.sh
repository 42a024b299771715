#!/usr/bin/env bash
# Efficiency on MME (paper Sec. 4.6, Table 5) from one command: the timing rows of scripts/eval/efficiency.sh
# (prefill, latency, KV cache, peak memory, FLOPs) and the MME runs of the same methods and budgets, joined
# into one table by `python -m llava.bench.table5_report`.
#
#   bash scripts/ablation/efficiency_sweep.sh                      # vanilla, fastv, cdpruner, entropy at 192, 128
#   METHODS="fastv entropy" AVG_TOKENS="192 128 64" CUDA_VISIBLE_DEVICES=0,1 bash scripts/ablation/efficiency_sweep.sh
#
# Environment:
#   METHODS     methods (default "fastv cdpruner entropy"); AVG_TOKENS  average budgets (default "192 128")
#   LAYER       pruning layer of the in-model methods (default 2; vision-stage ones are at 0)
#   MODEL_PATH  the checkpoint timed and run (default as scripts/eval/_common.sh: ./checkpoints/$CKPT or the hub)
#   REPEATS, NEW_TOKENS, NUM_QUESTIONS, DEVICE   the timing's settings (scripts/eval/efficiency.sh)
#   EFFICIENCY_ARGS  more flags for python -m llava.bench.efficiency (e.g. "--dtype float16 --warmup 2")
#   EFFICIENCY_JSON  the timing rows (default $RESULTS_DIR/efficiency/$CKPT-$SWEEP.json; kept: a rerun that finds
#               every row there does not time again)
#   SWEEP       (default table5), REPORT_DIR (default $RESULTS_DIR/ablation/$CKPT-$SWEEP: table5.md/.csv/.json)
# Everything else passes through as for scripts/ablation/method_sweep.sh. The timing runs first and alone
# (other work on the machine would disturb it), on the first GPU listed; the MME runs then share the GPUs.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PYTHON=${PYTHON:-python}
export PYTHON
exec "$PYTHON" -m llava.eval.sweep efficiency
