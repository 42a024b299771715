#!/usr/bin/env bash
# MMStar (MMStar.tsv, VLMEvalKit's TSV): answers, scores and the run record.
#   CKPT=llava-v1.5-7b bash scripts/eval/mmstar.sh
#   METHOD=entropy LAYER=2 AVG_TOKENS=192 bash scripts/eval/mmstar.sh
# Environment: see scripts/eval/_common.sh. The reported number is the accuracy (VLMEvalKit's exact matching, no LLM judge).
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

DATA=$EVAL_ROOT/mmstar
require_data MMStar "$DATA/MMStar.tsv"
ANSWERS=$DATA/answers/$RUN_NAME.jsonl

run_driver model_vqa_tsv "$ANSWERS" \
    --question-file "$DATA/MMStar.tsv" \
    --prompt-style mcq

"$PYTHON" -m llava.eval.eval_mmstar \
    --annotation-file "$DATA/MMStar.tsv" \
    --result-file "$ANSWERS" \
    --output-json "$DATA/answers/${RUN_NAME}_scores.json"

write_record mmstar "$ANSWERS" "$DATA/answers/${RUN_NAME}_scores.json"
