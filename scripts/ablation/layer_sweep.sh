#!/usr/bin/env bash
# Pruning-layer ablation (paper Sec. 4.7.1, Figure 5): one benchmark run per (method, layer) at a fixed
# budget, then `entropyprune report` over the runs: a score-by-layer table and figure.
#
#   bash scripts/ablation/layer_sweep.sh                                   # entropy at K = 1 2 3 5 7, MME, avg 192
#   METHODS="entropy random" LAYERS="1 2 3 5 7" BENCH=textvqa AVG_TOKENS=192 bash scripts/ablation/layer_sweep.sh
#
# Environment:
#   LAYERS     pruning layers K to sweep (default "1 2 3 5 7", the paper's); "auto" = the model's Entropy
#              Collapse Layer (see docs/ECL.md)
#   METHODS    pruning methods (default "entropy")
#   BENCH      benchmark: any scripts/eval/$BENCH.sh (mme, textvqa, sqa, mmbench, mmbench_cn, mmvet; default mme)
#   KEEP | AVG_TOKENS | RATIO   the fixed budget (default AVG_TOKENS=192, the budget of Figure 5)
#   SWEEP      name of this sweep, part of every run name (default layersweep); runs are named
#              $CKPT-$SWEEP-<method>-L<layer>-<budget>[-<states>][-<variant>]
#   BASELINE   1 = also run the benchmark unpruned once ($CKPT-$SWEEP-vanilla), drawn as a reference line
#   REPORT_DIR where report.md and report.png go (default $RESULTS_DIR/ablation/$CKPT-$SWEEP-$BENCH)
# Everything else (CKPT, MODEL_PATH, STATES, VARIANT, EVAL_ROOT, RESULTS_DIR, EVAL_ARGS, BATCH_SIZE, BUCKET_WINDOW,
# CUDA_VISIBLE_DEVICES, PYTHON, ...) passes through to scripts/eval/$BENCH.sh; see scripts/eval/_common.sh.
# Each run resumes where an interrupted one stopped, so rerunning the sweep only does what is missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

LAYERS=${LAYERS:-"1 2 3 5 7"}
METHODS=${METHODS:-entropy}
BENCH=${BENCH:-mme}
SWEEP=${SWEEP:-layersweep}
CKPT=${CKPT:-llava-v1.5-7b}
RESULTS_DIR=${RESULTS_DIR:-./results}
PYTHON=${PYTHON:-python}
export CKPT RESULTS_DIR PYTHON

script=scripts/eval/$BENCH.sh
if [[ ! -f "$script" ]]; then
    echo "error: BENCH=$BENCH: $script does not exist; choose one of mme, textvqa, sqa, mmbench, mmbench_cn, mmvet" >&2
    exit 1
fi

# The fixed budget: exactly one of KEEP / AVG_TOKENS / RATIO, defaulting to the paper's average of 192.
set_budgets=()
[[ -n "${KEEP:-}" ]] && set_budgets+=("KEEP=$KEEP keep$KEEP")
[[ -n "${AVG_TOKENS:-}" ]] && set_budgets+=("AVG_TOKENS=$AVG_TOKENS avg$AVG_TOKENS")
[[ -n "${RATIO:-}" ]] && set_budgets+=("RATIO=$RATIO ratio$RATIO")
if (( ${#set_budgets[@]} == 0 )); then
    set_budgets=("AVG_TOKENS=192 avg192")
elif (( ${#set_budgets[@]} > 1 )); then
    echo "error: give one budget for the whole sweep, got ${#set_budgets[@]}: KEEP, AVG_TOKENS and RATIO are exclusive" >&2
    exit 1
fi
read -r budget_env budget_tag <<< "${set_budgets[0]}"
# The budget travels as exactly one variable; the other two are cleared for the benchmark script.
unset KEEP AVG_TOKENS RATIO

# Same suffixes as the default run names of scripts/eval/_common.sh, so the names say what differs.
extra_tag=""
[[ -n "${STATES:-}" && "${STATES}" != query ]] && extra_tag+="-$STATES"
[[ -n "${VARIANT:-}" && "${VARIANT}" != official ]] && extra_tag+="-$VARIANT"

runs=()
failed=()
if [[ "${BASELINE:-0}" == 1 ]]; then
    run="$CKPT-$SWEEP-vanilla"
    echo "==== $BENCH: unpruned ($run) ===="
    # Vanilla LLaVA: no METHOD, LAYER or budget may reach the benchmark script.
    if env -u METHOD -u LAYER RUN_NAME="$run" bash "$script"; then runs+=("$run"); else failed+=("$run"); fi
fi
for method in $METHODS; do
    for layer in $LAYERS; do
        run="$CKPT-$SWEEP-$method-L$layer-$budget_tag$extra_tag"
        echo "==== $BENCH: $method at layer $layer, $budget_env ($run) ===="
        # A failed run (say, a layer out of range for this model) does not stop the others.
        if env METHOD="$method" LAYER="$layer" "$budget_env" RUN_NAME="$run" bash "$script"; then
            runs+=("$run")
        else
            failed+=("$run")
        fi
    done
done

REPORT_DIR=${REPORT_DIR:-$RESULTS_DIR/ablation/$CKPT-$SWEEP-$BENCH}
echo "==== report: $REPORT_DIR ===="
"$PYTHON" -m llava.cli report "$RESULTS_DIR" --match "$CKPT-$SWEEP-*" --benchmark "$BENCH" --out "$REPORT_DIR"
if (( ${#failed[@]} > 0 )); then
    echo "failed runs (${#failed[@]} of $(( ${#runs[@]} + ${#failed[@]} ))): ${failed[*]}; see the errors above (rerunning the sweep redoes only what is missing)" >&2
    exit 1
fi
echo "done: ${#runs[@]} runs; records in $RESULTS_DIR/$BENCH/, table and figure in $REPORT_DIR"
