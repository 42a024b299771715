#!/usr/bin/env bash
# ScienceQA test (LLaVA-1.5's sqa.sh): option letters; the reported number is IMG-Accuracy.
#   CKPT=llava-v1.5-7b bash scripts/eval/sqa.sh
#   METHOD=entropy LAYER=2 AVG_TOKENS=192 bash scripts/eval/sqa.sh
# Environment: see scripts/eval/_common.sh.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

DATA=$EVAL_ROOT/scienceqa
require_data ScienceQA "$DATA/llava_test_CQM-A.json" "$DATA/images/test" "$DATA/problems.json" "$DATA/pid_splits.json"
ANSWERS=$DATA/answers/$RUN_NAME.jsonl

run_driver model_vqa_science "$ANSWERS" \
    --question-file "$DATA/llava_test_CQM-A.json" \
    --image-folder "$DATA/images/test" \
    --single-pred-prompt

"$PYTHON" -m llava.eval.eval_science_qa \
    --base-dir "$DATA" \
    --result-file "$ANSWERS" \
    --output-file "$DATA/answers/${RUN_NAME}_output.jsonl" \
    --output-result "$DATA/answers/${RUN_NAME}_result.json" \
    --output-json "$DATA/answers/${RUN_NAME}_scores.json"

write_record sqa "$ANSWERS" "$DATA/answers/${RUN_NAME}_scores.json"
