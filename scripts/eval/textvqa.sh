#!/usr/bin/env bash
# TextVQA val (LLaVA-1.5's textvqa.sh): prompts carry the reference OCR tokens; accuracy as LLaVA's scorer.
#   CKPT=llava-v1.5-7b bash scripts/eval/textvqa.sh
#   METHOD=entropy LAYER=2 AVG_TOKENS=192 bash scripts/eval/textvqa.sh
# Environment: see scripts/eval/_common.sh.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

DATA=$EVAL_ROOT/textvqa
require_data TextVQA "$DATA/llava_textvqa_val_v051_ocr.jsonl" "$DATA/train_images" "$DATA/TextVQA_0.5.1_val.json"
ANSWERS=$DATA/answers/$RUN_NAME.jsonl

run_driver model_vqa_loader "$ANSWERS" \
    --question-file "$DATA/llava_textvqa_val_v051_ocr.jsonl" \
    --image-folder "$DATA/train_images"

"$PYTHON" -m llava.eval.eval_textvqa \
    --annotation-file "$DATA/TextVQA_0.5.1_val.json" \
    --result-file "$ANSWERS" \
    --output-json "$DATA/answers/${RUN_NAME}_scores.json"

write_record textvqa "$ANSWERS" "$DATA/answers/${RUN_NAME}_scores.json"
