#!/usr/bin/env bash
# All five benchmarks of the paper's tables (six scripts: MMBench and MMBench-CN are separate), one after
# another with the same environment (CKPT, MODEL_PATH, METHOD, LAYER, KEEP | AVG_TOKENS | RATIO, ...).
# A benchmark that fails (e.g. its data is missing) does not stop the others; the exit status is 1 if any did.
#   METHOD=entropy LAYER=2 AVG_TOKENS=192 bash scripts/eval/all.sh
set -uo pipefail
here=$(dirname "${BASH_SOURCE[0]}")
failed=()
for bench in mme textvqa sqa mmbench mmbench_cn mmvet; do
    echo "==== $bench ===="
    bash "$here/$bench.sh" || failed+=("$bench")
done
if (( ${#failed[@]} > 0 )); then
    echo "failed: ${failed[*]}" >&2
    exit 1
fi
echo "all benchmarks done; records in ${RESULTS_DIR:-./results}/<benchmark>/"
