#!/usr/bin/env bash
# MM-Vet (LLaVA-1.5's mmvet.sh): free-form answers and the results JSON for the official GPT-4 grader.
# With MMVET_GRADE=1 (and MMVET_API_KEY, optionally MMVET_API_BASE / MMVET_MODEL) it is graded here too.
#   CKPT=llava-v1.5-7b bash scripts/eval/mmvet.sh
#   METHOD=entropy LAYER=2 AVG_TOKENS=192 bash scripts/eval/mmvet.sh
# Environment: see scripts/eval/_common.sh. Note the folder name: mm-vet, not mmvet.
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

DATA=$EVAL_ROOT/mm-vet
require_data MM-Vet "$DATA/llava-mm-vet.jsonl" "$DATA/images"
ANSWERS=$DATA/answers/$RUN_NAME.jsonl
if [[ "${MMVET_GRADE:-0}" == 1 ]]; then  # found out now, not after every answer is generated
    [[ -n "${MMVET_API_KEY:-}" ]] || die "MMVET_GRADE=1 needs MMVET_API_KEY (and optionally MMVET_API_BASE, MMVET_MODEL); unset MMVET_GRADE to write the submission only"
    require_data MM-Vet "$DATA/mm-vet.json"
fi
SUBMISSION=$DATA/results/$RUN_NAME.json

run_driver model_vqa "$ANSWERS" \
    --question-file "$DATA/llava-mm-vet.jsonl" \
    --image-folder "$DATA/images"

if [[ "${MMVET_GRADE:-0}" == 1 ]]; then
    require_data MM-Vet "$DATA/mm-vet.json"
    "$PYTHON" -m llava.eval.eval_mmvet --result-file "$ANSWERS" --output "$SUBMISSION" \
        --grade --mmvet-json "$DATA/mm-vet.json" --output-json "$DATA/results/${RUN_NAME}_scores.json"
    write_record mmvet "$ANSWERS" "$DATA/results/${RUN_NAME}_scores.json" "$SUBMISSION"
else
    # mm-vet.json, when present, lets the scorer refuse answers to samples MM-Vet does not have.
    CHECK=()
    [[ -f "$DATA/mm-vet.json" ]] && CHECK=(--mmvet-json "$DATA/mm-vet.json")
    "$PYTHON" -m llava.eval.eval_mmvet --result-file "$ANSWERS" --output "$SUBMISSION" ${CHECK[@]+"${CHECK[@]}"}
    echo "MM-Vet is graded by GPT-4: submit $SUBMISSION to the official evaluator (docs/Evaluation.md)."
    write_record mmvet "$ANSWERS" "" "$SUBMISSION"
fi
