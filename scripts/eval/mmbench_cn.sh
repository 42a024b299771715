#!/usr/bin/env bash
# MMBench-CN dev (LLaVA-1.5's mmbench_cn.sh, with its upload-folder bug fixed: everything stays under
# mmbench_cn/): Chinese answer suffix, submission xlsx and a local CircularEval score.
#   CKPT=llava-v1.5-7b bash scripts/eval/mmbench_cn.sh
#   METHOD=entropy LAYER=2 AVG_TOKENS=192 bash scripts/eval/mmbench_cn.sh
# Environment: see scripts/eval/_common.sh; SPLIT (default mmbench_dev_cn_20231003).
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

SPLIT=${SPLIT:-mmbench_dev_cn_20231003}
DATA=$EVAL_ROOT/mmbench_cn
require_data MMBench-CN "$DATA/$SPLIT.tsv"
ANSWERS=$DATA/answers/$SPLIT/$RUN_NAME.jsonl

run_driver model_vqa_mmbench "$ANSWERS" \
    --question-file "$DATA/$SPLIT.tsv" \
    --single-pred-prompt \
    --lang cn

"$PYTHON" -m llava.eval.eval_mmbench \
    --annotation-file "$DATA/$SPLIT.tsv" \
    --result-file "$ANSWERS" \
    --upload-dir "$DATA/answers_upload/$SPLIT" \
    --experiment "$RUN_NAME" \
    --output-json "$DATA/answers/$SPLIT/${RUN_NAME}_scores.json"

write_record mmbench_cn "$ANSWERS" "$DATA/answers/$SPLIT/${RUN_NAME}_scores.json"
