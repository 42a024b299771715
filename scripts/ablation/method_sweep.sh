#!/usr/bin/env bash
# Methods x budgets x benchmarks (paper Table 1): one benchmark run per (benchmark, budget, method), plus one
# unpruned run per benchmark, then `entropyprune report` over the sweep's records.
#
#   bash scripts/ablation/method_sweep.sh                                  # Table 1's methods at 192/128/64
#   METHODS="fastv entropy" AVG_TOKENS="192 64" BENCHMARKS="mme textvqa" bash scripts/ablation/method_sweep.sh
#   CUDA_VISIBLE_DEVICES=0,1,2,3 bash scripts/ablation/method_sweep.sh    # four runs at a time, one per GPU
#
# Environment:
#   METHODS     pruning methods (default: fastv pdrop sparsevlm dart divprune cdpruner prumerge entropy, the
#               paper's Table 1 methods that the registry has). Vision-stage methods (cdpruner, divprune, ...)
#               run at layer 0, the others at layer 2; methods that pick their own count (prumerge,
#               prumerge_plus) get the budget with PRUNE_OPTIONS adaptive=false, which the run name shows
#   BENCHMARKS  benchmarks, any scripts/eval/<name>.sh (default: mme textvqa sqa mmbench mmbench_cn mmvet mmstar)
#   KEEP | AVG_TOKENS | RATIO   the budgets, one kind, a list (default AVG_TOKENS="192 128 64")
#   LAYER       one pruning layer for every in-model method (default 2); vision-stage-only methods stay at 0
#   STATES      a list of query / key (default: unset, the scripts' query); each value is its own run
#   PRUNE_OPTIONS  method options: NAME=VALUE for every method, METHOD:NAME=VALUE for one (pdrop:layer_list=2,8,16)
#   BASELINE    1 (default) = also the unpruned run of each benchmark ($CKPT-$SWEEP-vanilla); 0 = not
#   SWEEP       name of this sweep, part of every run name (default methods); runs are named
#               $CKPT-$SWEEP-<method>-L<layer>-<budget>[-<states>][-<variant>][-<options>]. Sweeps with the
#               same SWEEP share the runs they have in common (a finished run is not run twice)
#   REPORT_DIR  where the report goes (default $RESULTS_DIR/ablation/$CKPT-$SWEEP)
#   LOG_DIR     one log per run, <benchmark>/<run>.log (default $RESULTS_DIR/logs/$CKPT-$SWEEP)
#   CUDA_VISIBLE_DEVICES  several GPUs: independent runs side by side, each on one of them
# Everything else (CKPT, MODEL_PATH, VARIANT, SEED, EVAL_ROOT, RESULTS_DIR, EVAL_ARGS, BATCH_SIZE, PYTHON, ...)
# passes through to scripts/eval/<benchmark>.sh; see scripts/eval/_common.sh.
# A finished run (its record complete) is skipped, an interrupted one resumed: rerun the same command after a
# crash. A failed run does not stop the others; the exit status is 1 if any failed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PYTHON=${PYTHON:-python}
export PYTHON

# The report: Table 1's layout (methods grouped by budget, Acc., Rel., best bold, second underlined; Markdown,
# LaTeX, CSV, the radar chart of Figure 1(b)) with the published LLaVA-1.5-7B numbers beside ours; see
# docs/Evaluation.md section 6 for the flags (REPORT_ARGS="--table comparison": without the per-layer tables).
REPORT_ARGS=${REPORT_ARGS:---table all --published}
export REPORT_ARGS

exec "$PYTHON" -m llava.eval.sweep methods
