# Shared by the benchmark scripts in scripts/eval/ (sourced, not run on its own).
#
# Environment (all optional):
#   CKPT           checkpoint name, used in run names and answer-file names (default llava-v1.5-7b)
#   MODEL_PATH     checkpoint folder or hub id (default ./checkpoints/$CKPT if that folder exists,
#                  else liuhaotian/$CKPT, which is downloaded when online)
#   RUN_NAME       name of this run's files (default $CKPT, plus a pruning tag such as -entropy-L2-avg192)
#   METHOD         pruning method (entropy, random, ...); unset or empty = vanilla LLaVA-1.5
#   LAYER          pruning layer K (default 2, 0 for vision-stage methods; "auto" = the model's Entropy Collapse Layer)
#   KEEP | AVG_TOKENS | RATIO   the budget: tokens kept per image | average over layers | fraction kept
#   STATES         query (default) or key;  VARIANT  official (default) or paper;  SEED  random baseline seed
#   CONV_MODE      conversation template (default vicuna_v1, as LLaVA-1.5's scripts; also right for the
#                  llava-v1.6-vicuna checkpoints; llava-v1.6-mistral-7b: mistral_instruct, llava-v1.6-34b:
#                  chatml_direct; see docs/LLaVA-NeXT.md)
#   BATCH_SIZE     questions per model call (default 1, as LLaVA-1.5's scripts); the answers are the same at
#                  any batch size, so a run may be resumed with another one
#   BUCKET_WINDOW  batch questions of similar prompt length: sort each window of this many questions by
#                  length (answers are still written in question order); unset: batches in question order
#   CUDA_VISIBLE_DEVICES  one chunk per listed GPU, run in parallel and merged in order;
#                  unset or empty: one process (on the GPU if there is one, else on the CPU)
#   EVAL_ROOT      benchmark data (default ./playground/data/eval, LLaVA's layout; see docs/Evaluation.md)
#   RESULTS_DIR    where run records go (default ./results)
#   EVAL_ARGS      extra driver flags, e.g. "--max-new-tokens 16 --dtype bfloat16"
#   PYTHON         interpreter (default python)
# Relative paths are taken from the repository root: the scripts run from there.

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

PYTHON=${PYTHON:-python}
EVAL_ROOT=${EVAL_ROOT:-./playground/data/eval}
RESULTS_DIR=${RESULTS_DIR:-./results}
CKPT=${CKPT:-llava-v1.5-7b}
if [[ -z "${MODEL_PATH:-}" ]]; then
    if [[ -d "./checkpoints/$CKPT" ]]; then MODEL_PATH="./checkpoints/$CKPT"; else MODEL_PATH="liuhaotian/$CKPT"; fi
fi
CONV_MODE=${CONV_MODE:-vicuna_v1}
BATCH_ARGS=(--batch-size "${BATCH_SIZE:-1}")
[[ -n "${BUCKET_WINDOW:-}" ]] && BATCH_ARGS+=(--bucket-window "$BUCKET_WINDOW")
EXTRA_ARGS=()
read -r -a EXTRA_ARGS <<< "${EVAL_ARGS:-}"

die() {
    echo "error: $*" >&2
    exit 1
}

# The pruning flags and the run-name tag, from METHOD / LAYER / KEEP | AVG_TOKENS | RATIO / STATES / VARIANT /
# SEED / PRUNE_OPTIONS.
VISION_METHODS="cdpruner divprune prumerge prumerge_plus visionzip vispruner"
# Methods that choose each image's count themselves by default (no budget; PRUNE_OPTIONS="adaptive=false"
# gives them one).
ADAPTIVE_METHODS="prumerge prumerge_plus"
PRUNE_ARGS=()
PRUNE_TAG=""
budgets=()
[[ -n "${KEEP:-}" ]] && budgets+=("--prune-keep $KEEP keep$KEEP")
[[ -n "${AVG_TOKENS:-}" ]] && budgets+=("--prune-avg-tokens $AVG_TOKENS avg$AVG_TOKENS")
[[ -n "${RATIO:-}" ]] && budgets+=("--prune-ratio $RATIO ratio$RATIO")
if [[ -n "${METHOD:-}" ]]; then
    budget_flags=()
    if (( ${#budgets[@]} == 0 )) && [[ " $ADAPTIVE_METHODS " == *" $METHOD "* ]]; then
        budget_tag=adaptive
    else
        (( ${#budgets[@]} == 1 )) || die "METHOD=$METHOD needs exactly one budget: KEEP, AVG_TOKENS or RATIO (e.g. AVG_TOKENS=192)"
        read -r budget_flag budget_value budget_tag <<< "${budgets[0]}"
        budget_flags=("$budget_flag" "$budget_value")
    fi
    # Vision-stage methods prune before the language model: their layer is 0 (the registry says which they are;
    # tests/test_scripts.py checks this list against it).
    default_layer=2
    [[ " $VISION_METHODS " == *" $METHOD "* ]] && default_layer=0
    PRUNE_ARGS=(--prune-method "$METHOD" --prune-layer "${LAYER:-$default_layer}" "${budget_flags[@]}")
    PRUNE_TAG="-$METHOD-L${LAYER:-$default_layer}-$budget_tag"
    if [[ -n "${STATES:-}" ]]; then
        PRUNE_ARGS+=(--prune-states "$STATES")
        [[ "$STATES" != query ]] && PRUNE_TAG+="-$STATES"
    fi
    if [[ -n "${VARIANT:-}" ]]; then
        PRUNE_ARGS+=(--entropy-variant "$VARIANT")
        [[ "$VARIANT" != official ]] && PRUNE_TAG+="-$VARIANT"
    fi
    if [[ -n "${SEED:-}" ]]; then
        PRUNE_ARGS+=(--prune-seed "$SEED")
        PRUNE_TAG+="-seed$SEED"
    fi
    # PRUNE_OPTIONS="NAME=VALUE NAME=VALUE": the method's own options (docs/Methods.md), one flag each;
    # the run name carries them (layer_list=2,8,16 -> -layer_list2.8.16) so runs with other options never share files.
    for option in ${PRUNE_OPTIONS:-}; do
        [[ "$option" == *=* ]] || die "PRUNE_OPTIONS: '$option' is not NAME=VALUE (e.g. PRUNE_OPTIONS=\"layer_list=2,8,16\")"
        PRUNE_ARGS+=(--prune-option "$option")
        tag=${option/=/}
        tag=${tag//,/.}
        PRUNE_TAG+="-${tag//\//_}"  # a path value (clip_text_tower=/models/clip) must not make folders
    done
elif (( ${#budgets[@]} > 0 )) || [[ -n "${LAYER:-}" ]] || [[ -n "${PRUNE_OPTIONS:-}" ]]; then
    die "KEEP / AVG_TOKENS / RATIO / LAYER / PRUNE_OPTIONS are set but METHOD is not; set METHOD=entropy (or another method), or unset them for vanilla LLaVA"
fi
RUN_NAME=${RUN_NAME:-$CKPT$PRUNE_TAG}
# It names files under answers/ and results/: checked here, before anything runs.
[[ "$RUN_NAME" =~ ^[A-Za-z0-9_+=.,-]+$ && "$RUN_NAME" != .* ]] \
    || die "RUN_NAME='$RUN_NAME' is not a plain file name (letters, digits and _ + = . , - only, not starting with '.')"
# The record is written last: a results folder that cannot be written must stop the run before the model loads.
# (Checked on the nearest folder that exists, so that nothing is created before the data checks pass.)
_writable=$RESULTS_DIR
while [[ ! -e "$_writable" ]]; do _writable=$(dirname "$_writable"); done
[[ -d "$_writable" && -w "$_writable" ]] \
    || die "RESULTS_DIR=$RESULTS_DIR cannot be written (run records go there); choose another RESULTS_DIR"

now() {
    "$PYTHON" -c 'import time; print(time.time())'
}
START_TIME=$(now)

# require_data BENCHMARK PATH...: every path must exist, else one message naming what is missing.
require_data() {
    local bench=$1 missing=() path
    shift
    for path in "$@"; do
        [[ -e "$path" ]] || missing+=("$path")
    done
    if (( ${#missing[@]} > 0 )); then
        echo "error: $bench data not found: ${missing[*]}" >&2
        echo "       (EVAL_ROOT=$EVAL_ROOT). See docs/Evaluation.md for where to get each benchmark and where it goes;" >&2
        echo "       'python -m llava.tools.make_demo_data --root DIR' writes a tiny demo set to try the scripts." >&2
        exit 1
    fi
}

# run_driver MODULE ANSWERS_FILE DRIVER_ARGS...
# One process per GPU in CUDA_VISIBLE_DEVICES, each on its chunk (ANSWERS_FILE minus .jsonl)/<N>_<i>.jsonl,
# merged in chunk order into ANSWERS_FILE; with one GPU or none, a single process writes ANSWERS_FILE.
# Every driver resumes what an interrupted run left, so rerunning the script picks up where it stopped.
run_driver() {
    local module=$1 answers=$2
    shift 2
    local common=(--model-path "$MODEL_PATH" --temperature 0 --conv-mode "$CONV_MODE" "${BATCH_ARGS[@]}" "$@")
    common+=(${PRUNE_ARGS[@]+"${PRUNE_ARGS[@]}"} ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"})
    local gpus=()
    IFS=',' read -r -a gpus <<< "${CUDA_VISIBLE_DEVICES:-}"
    local chunks=${#gpus[@]}
    if (( chunks <= 1 )); then
        "$PYTHON" -m "llava.eval.$module" "${common[@]}" --answers-file "$answers"
        return
    fi
    local stem=${answers%.jsonl} idx pids=() parts=() failed=()
    mkdir -p "$stem"
    for (( idx = 0; idx < chunks; idx++ )); do
        parts+=("$stem/${chunks}_${idx}.jsonl")
        CUDA_VISIBLE_DEVICES=${gpus[$idx]} "$PYTHON" -m "llava.eval.$module" "${common[@]}" \
            --num-chunks "$chunks" --chunk-idx "$idx" --answers-file "${parts[$idx]}" \
            > "$stem/${chunks}_${idx}.log" 2>&1 &
        pids+=($!)
    done
    echo "running $chunks chunks on GPUs ${CUDA_VISIBLE_DEVICES}; logs: $stem/${chunks}_<i>.log" >&2
    for (( idx = 0; idx < chunks; idx++ )); do
        wait "${pids[$idx]}" || failed+=("$idx")
    done
    if (( ${#failed[@]} > 0 )); then
        for idx in "${failed[@]}"; do
            echo "chunk $idx (GPU ${gpus[$idx]}) failed; the end of $stem/${chunks}_${idx}.log:" >&2
            tail -n 15 "$stem/${chunks}_${idx}.log" >&2
        done
        die "${#failed[@]} of $chunks chunks failed; rerun the same command to resume them"
    fi
    "$PYTHON" -m llava.eval.driver merge --output "$answers" "${parts[@]}"
}

# write_record BENCHMARK ANSWERS_FILE SCORES_JSON [SUBMISSION]: results/<benchmark>/<run>.json
write_record() {
    local bench=$1 answers=$2 scores=$3 submission=${4:-}
    local wall
    wall=$("$PYTHON" -c 'import sys, time; print(f"{time.time() - float(sys.argv[1]):.1f}")' "$START_TIME")
    local args=(--benchmark "$bench" --run-name "$RUN_NAME" --answers "$answers" --wall-time "$wall"
                --results-dir "$RESULTS_DIR")
    [[ -n "$scores" ]] && args+=(--scores-json "$scores")
    [[ -n "$submission" ]] && args+=(--submission "$submission")
    "$PYTHON" -m llava.eval.record "${args[@]}"
}
