#!/usr/bin/env bash
# AI2D (AI2D_TEST.tsv, VLMEvalKit's TSV): answers, scores and the run record.
#   CKPT=llava-v1.5-7b bash scripts/eval/ai2d.sh
#   METHOD=entropy LAYER=2 AVG_TOKENS=192 bash scripts/eval/ai2d.sh
# Environment: see scripts/eval/_common.sh. The reported number is the test accuracy (VLMEvalKit's exact matching, no LLM judge).
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

DATA=$EVAL_ROOT/ai2d
require_data AI2D "$DATA/AI2D_TEST.tsv"
ANSWERS=$DATA/answers/$RUN_NAME.jsonl

run_driver model_vqa_tsv "$ANSWERS" \
    --question-file "$DATA/AI2D_TEST.tsv" \
    --prompt-style mcq

"$PYTHON" -m llava.eval.eval_ai2d \
    --annotation-file "$DATA/AI2D_TEST.tsv" \
    --result-file "$ANSWERS" \
    --output-json "$DATA/answers/${RUN_NAME}_scores.json"

write_record ai2d "$ANSWERS" "$DATA/answers/${RUN_NAME}_scores.json"
