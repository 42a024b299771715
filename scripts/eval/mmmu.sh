#!/usr/bin/env bash
# MMMU (MMMU_DEV_VAL.tsv, VLMEvalKit's TSV): answers, scores and the run record.
#   CKPT=llava-v1.5-7b bash scripts/eval/mmmu.sh
#   METHOD=entropy LAYER=2 AVG_TOKENS=192 bash scripts/eval/mmmu.sh
# Environment: see scripts/eval/_common.sh. The reported number is the validation accuracy (MMMU's own answer parsing).
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

DATA=$EVAL_ROOT/mmmu
require_data MMMU "$DATA/MMMU_DEV_VAL.tsv"
ANSWERS=$DATA/answers/$RUN_NAME.jsonl

run_driver model_vqa_tsv "$ANSWERS" \
    --question-file "$DATA/MMMU_DEV_VAL.tsv" \
    --prompt-style mcq

"$PYTHON" -m llava.eval.eval_mmmu \
    --annotation-file "$DATA/MMMU_DEV_VAL.tsv" \
    --result-file "$ANSWERS" \
    --output-json "$DATA/answers/${RUN_NAME}_scores.json"

write_record mmmu "$ANSWERS" "$DATA/answers/${RUN_NAME}_scores.json"
