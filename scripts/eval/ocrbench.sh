#!/usr/bin/env bash
# OCRBench (OCRBench.tsv, VLMEvalKit's TSV): answers, scores and the run record.
#   CKPT=llava-v1.5-7b bash scripts/eval/ocrbench.sh
#   METHOD=entropy LAYER=2 AVG_TOKENS=192 bash scripts/eval/ocrbench.sh
# Environment: see scripts/eval/_common.sh. The reported number is the Final Score, out of 1000.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

DATA=$EVAL_ROOT/ocrbench
require_data OCRBench "$DATA/OCRBench.tsv"
ANSWERS=$DATA/answers/$RUN_NAME.jsonl

run_driver model_vqa_tsv "$ANSWERS" \
    --question-file "$DATA/OCRBench.tsv" \
    --prompt-style plain

"$PYTHON" -m llava.eval.eval_ocrbench \
    --annotation-file "$DATA/OCRBench.tsv" \
    --result-file "$ANSWERS" \
    --output-json "$DATA/answers/${RUN_NAME}_scores.json"

write_record ocrbench "$ANSWERS" "$DATA/answers/${RUN_NAME}_scores.json"
