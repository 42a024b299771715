#!/usr/bin/env bash
# Pruning-layer ablation (paper Sec. 4.7.1, Figure 5): one benchmark run per (method, layer) at a fixed
# budget, then `entropyprune report` over the runs: a score-by-layer table and figure.
#
#   bash scripts/ablation/layer_sweep.sh                                   # entropy at K = 1 2 3 5 7, MME, avg 192
#   METHODS="entropy random" LAYERS="1 2 3 5 7" BENCH=textvqa AVG_TOKENS=192 bash scripts/ablation/layer_sweep.sh
#   METHODS="entropy fastv dart" BENCH="textvqa mmbench" bash scripts/ablation/layer_sweep.sh   # Figure 5
#
# Environment:
#   LAYERS     pruning layers K to sweep (default "1 2 3 5 7", the paper's); "auto" = the model's Entropy
#              Collapse Layer (see docs/ECL.md)
#   METHODS    pruning methods that prune inside the language model (default "entropy")
#   BENCH      benchmark, or several: any scripts/eval/$BENCH.sh (mme, textvqa, sqa, mmbench, ...; default mme)
#   KEEP | AVG_TOKENS | RATIO   the fixed budget, one value (default AVG_TOKENS=192, the budget of Figure 5)
#   SWEEP      name of this sweep, part of every run name (default layersweep); runs are named
#              $CKPT-$SWEEP-<method>-L<layer>-<budget>[-<states>][-<variant>]
#   BASELINE   1 = also run each benchmark unpruned once ($CKPT-$SWEEP-vanilla), drawn as a reference line
#   REPORT_DIR where report.md and report.png go (default $RESULTS_DIR/ablation/$CKPT-$SWEEP-<bench>[-<bench>...])
#   LOG_DIR    one log per run (default $RESULTS_DIR/logs/$CKPT-$SWEEP)
#   CUDA_VISIBLE_DEVICES  several GPUs: independent runs side by side, each on one of them
# Everything else (CKPT, MODEL_PATH, STATES, VARIANT, EVAL_ROOT, RESULTS_DIR, EVAL_ARGS, BATCH_SIZE, BUCKET_WINDOW,
# PYTHON, ...) passes through to scripts/eval/$BENCH.sh; see scripts/eval/_common.sh.
# A finished run is skipped and an interrupted one resumed, so rerunning the sweep only does what is missing;
# a failed run (say, a layer out of range for this model) does not stop the others, and the exit status is 1.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PYTHON=${PYTHON:-python}
export PYTHON
exec "$PYTHON" -m llava.eval.sweep layers
