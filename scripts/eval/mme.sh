#!/usr/bin/env bash
# MME (LLaVA-1.5's mme.sh): answers, MME's eval_tool files, scores and the run record in one go.
#   CKPT=llava-v1.5-7b bash scripts/eval/mme.sh
#   METHOD=entropy LAYER=2 AVG_TOKENS=192 bash scripts/eval/mme.sh
# Environment: see scripts/eval/_common.sh. The reported MME number is Perception (LLaVA-1.5-7B: 1510.7).
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

DATA=$EVAL_ROOT/MME
require_data MME "$DATA/llava_mme.jsonl" "$DATA/MME_Benchmark_release_version"
ANSWERS=$DATA/answers/$RUN_NAME.jsonl

run_driver model_vqa_loader "$ANSWERS" \
    --question-file "$DATA/llava_mme.jsonl" \
    --image-folder "$DATA/MME_Benchmark_release_version"

# LLaVA's convert_answer_to_mme.py + MME's calculation.py in one step; the per-category files for MME's
# own eval_tool are written too.
"$PYTHON" -m llava.eval.eval_mme \
    --answers-file "$ANSWERS" \
    --mme-dir "$DATA/MME_Benchmark_release_version" \
    --write-eval-tool-dir "$DATA/eval_tool/answers/$RUN_NAME" \
    --output-json "$DATA/answers/${RUN_NAME}_scores.json"

write_record mme "$ANSWERS" "$DATA/answers/${RUN_NAME}_scores.json"
