#!/usr/bin/env bash
# POPE on COCO val2014 (LLaVA-1.5's pope.sh): answers, per-split scores and the run record.
#   CKPT=llava-v1.5-7b bash scripts/eval/pope.sh
#   METHOD=entropy LAYER=2 AVG_TOKENS=192 bash scripts/eval/pope.sh
# Environment: see scripts/eval/_common.sh. The reported number is the F1 averaged over the adversarial,
# popular and random splits (LLaVA-1.5-7B: 85.9).
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

DATA=$EVAL_ROOT/pope
require_data POPE "$DATA/llava_pope_test.jsonl" "$DATA/val2014" "$DATA/coco/coco_pope_adversarial.json" \
    "$DATA/coco/coco_pope_popular.json" "$DATA/coco/coco_pope_random.json"
ANSWERS=$DATA/answers/$RUN_NAME.jsonl

run_driver model_vqa_loader "$ANSWERS" \
    --question-file "$DATA/llava_pope_test.jsonl" \
    --image-folder "$DATA/val2014"

"$PYTHON" -m llava.eval.eval_pope \
    --annotation-dir "$DATA/coco" \
    --question-file "$DATA/llava_pope_test.jsonl" \
    --result-file "$ANSWERS" \
    --output-json "$DATA/answers/${RUN_NAME}_scores.json"

write_record pope "$ANSWERS" "$DATA/answers/${RUN_NAME}_scores.json"
