#!/usr/bin/env bash
# GQA testdev-balanced (LLaVA-1.5's gqa.sh): answers, GQA's predictions file, scores and the run record.
#   CKPT=llava-v1.5-7b bash scripts/eval/gqa.sh
#   METHOD=entropy LAYER=2 AVG_TOKENS=192 bash scripts/eval/gqa.sh
# Environment: see scripts/eval/_common.sh. The reported number is GQA's accuracy (LLaVA-1.5-7B: 62.0).
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

SPLIT=llava_gqa_testdev_balanced
DATA=$EVAL_ROOT/gqa
require_data GQA "$DATA/$SPLIT.jsonl" "$DATA/data/images" "$DATA/data/testdev_balanced_questions.json"
ANSWERS=$DATA/answers/$SPLIT/$RUN_NAME.jsonl

run_driver model_vqa_loader "$ANSWERS" \
    --question-file "$DATA/$SPLIT.jsonl" \
    --image-folder "$DATA/data/images"

# LLaVA's convert_gqa_for_eval.py + GQA's eval.py (accuracy and its per-type breakdowns) in one step; the
# predictions file that eval.py reads is written too.
"$PYTHON" -m llava.eval.eval_gqa \
    --question-file "$DATA/$SPLIT.jsonl" \
    --annotation-file "$DATA/data/testdev_balanced_questions.json" \
    --result-file "$ANSWERS" \
    --predictions-file "$DATA/answers/$SPLIT/${RUN_NAME}_testdev_balanced_predictions.json" \
    --output-json "$DATA/answers/$SPLIT/${RUN_NAME}_scores.json"

write_record gqa "$ANSWERS" "$DATA/answers/$SPLIT/${RUN_NAME}_scores.json" \
    "$DATA/answers/$SPLIT/${RUN_NAME}_testdev_balanced_predictions.json"
