#!/usr/bin/env bash
# MMBench dev (LLaVA-1.5's mmbench.sh): answers, the submission xlsx and, from the dev answers, a local
# CircularEval score (the official number comes from the OpenCompass server).
#   CKPT=llava-v1.5-7b bash scripts/eval/mmbench.sh
#   METHOD=entropy LAYER=2 AVG_TOKENS=192 bash scripts/eval/mmbench.sh
# Environment: see scripts/eval/_common.sh; SPLIT (default mmbench_dev_20230712).
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

SPLIT=${SPLIT:-mmbench_dev_20230712}
DATA=$EVAL_ROOT/mmbench
require_data MMBench "$DATA/$SPLIT.tsv"
ANSWERS=$DATA/answers/$SPLIT/$RUN_NAME.jsonl

run_driver model_vqa_mmbench "$ANSWERS" \
    --question-file "$DATA/$SPLIT.tsv" \
    --single-pred-prompt

"$PYTHON" -m llava.eval.eval_mmbench \
    --annotation-file "$DATA/$SPLIT.tsv" \
    --result-file "$ANSWERS" \
    --upload-dir "$DATA/answers_upload/$SPLIT" \
    --experiment "$RUN_NAME" \
    --output-json "$DATA/answers/$SPLIT/${RUN_NAME}_scores.json"

write_record mmbench "$ANSWERS" "$DATA/answers/$SPLIT/${RUN_NAME}_scores.json"
