#!/usr/bin/env bash
# Several benchmarks one after another with the same environment (CKPT, MODEL_PATH, METHOD, LAYER,
# KEEP | AVG_TOKENS | RATIO, ...). By default the five benchmarks of the paper's tables (six scripts:
# MMBench and MMBench-CN are separate); BENCHMARKS picks others, by script name, or "all" for every one.
# A benchmark that fails (e.g. its data is missing) does not stop the others; the exit status is 1 if any did.
#   METHOD=entropy LAYER=2 AVG_TOKENS=192 bash scripts/eval/all.sh
#   BENCHMARKS="gqa pope mmstar ai2d ocrbench mmmu" METHOD=entropy LAYER=2 AVG_TOKENS=192 bash scripts/eval/all.sh
set -uo pipefail
here=$(dirname "${BASH_SOURCE[0]}")
PAPER="mme textvqa sqa mmbench mmbench_cn mmvet"
MORE="gqa pope mmstar ai2d ocrbench mmmu"
BENCHMARKS=${BENCHMARKS:-$PAPER}
[[ "$BENCHMARKS" == all ]] && BENCHMARKS="$PAPER $MORE"
failed=()
for bench in $BENCHMARKS; do
    echo "==== $bench ===="
    if [[ ! -f "$here/$bench.sh" || "$bench" == all || "$bench" == _common || "$bench" == efficiency ]]; then
        echo "error: no benchmark script $bench; choose from: $PAPER $MORE" >&2
        failed+=("$bench")
        continue
    fi
    bash "$here/$bench.sh" || failed+=("$bench")
done
if (( ${#failed[@]} > 0 )); then
    echo "failed: ${failed[*]}" >&2
    exit 1
fi
echo "all benchmarks done; records in ${RESULTS_DIR:-./results}/<benchmark>/"
