"""Score TextVQA answers (LLaVA's `eval_textvqa.py`).

    python -m llava.eval.eval_textvqa --annotation-file TextVQA_0.5.1_val.json --result-file A.jsonl \
        [--output-json O.json]

Each answer is matched to its annotation by (image_id, question.lower()), where image_id is the answer's
`question_id` and the question is recovered from the answer's `prompt`. Prints `Samples: N` and
`Accuracy: xx.xx` (percent) and writes a JSON summary (default: next to the result file).
"""

from __future__ import annotations

import argparse
import os
import re

from llava.eval import (
    EvalInputError,
    default_summary_path,
    load_json,
    read_jsonl,
    run_cli,
    warn,
    write_json,
)
from llava.eval.m4c_evaluator import TextVQAAccuracyEvaluator

_LEGACY_QUESTION = re.compile(r"Question: (.*?) Short answer:", re.DOTALL)
_OCR_LINE = "Reference OCR token: "


def prompt_to_question(prompt: str) -> str:
    """Recover the lower-cased TextVQA question from the prompt stored in a LLaVA answer line.

    Handles the formats LLaVA's question files use: the legacy "OCR tokens: ... Question: ... Short
    answer:" prompt; the 3-line "question / Reference OCR token: ... / suffix" prompt (with the OCR line
    first in one variant); the 2-line "question / suffix" prompt. Anything else falls back to the first
    line, where LLaVA would stop with an assertion; an unmatched question still fails loudly later.
    """
    if prompt.startswith("OCR tokens: "):
        match = _LEGACY_QUESTION.search(prompt)
        if match is None:
            raise ValueError("legacy 'OCR tokens:' prompt without 'Question: ... Short answer:'")
        question = match.group(1)
    else:
        lines = prompt.split("\n")
        if _OCR_LINE in prompt and len(lines) == 3 and prompt.startswith(_OCR_LINE.rstrip()):
            question = lines[1]
        else:
            question = lines[0]
    return question.lower()


def load_annotations(annotation_file: str) -> dict[tuple[str, str], dict]:
    fix = "Download TextVQA_0.5.1_val.json from https://dl.fbaipublicfiles.com/textvqa/data/."
    data = load_json(annotation_file, "TextVQA annotation file", fix)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise EvalInputError(f"{annotation_file}: expected a JSON object with a 'data' list. {fix}")
    annotations = {}
    for i, ann in enumerate(data["data"]):
        missing = [k for k in ("image_id", "question", "answers") if k not in ann]
        if missing:
            raise EvalInputError(f"{annotation_file}: data[{i}] lacks {', '.join(missing)}. {fix}")
        # A repeated (image, question) pair keeps the last annotation, as LLaVA's dict comprehension does.
        annotations[(str(ann["image_id"]), ann["question"].lower())] = ann
    return annotations


def eval_textvqa(annotation_file: str, result_file: str, output_json: str | None = None) -> dict:
    annotations = load_annotations(annotation_file)
    results = read_jsonl(result_file, "TextVQA answers file", required=("question_id", "prompt", "text"))
    if not results:
        raise EvalInputError(f"{result_file} has no answers; run llava.eval.model_vqa_loader first.")
    evaluator = TextVQAAccuracyEvaluator()
    scores = []
    seen: set[tuple[str, str]] = set()
    for lineno, result in results:
        try:
            question = prompt_to_question(result["prompt"])
        except ValueError as e:
            raise EvalInputError(f"{result_file}:{lineno}: cannot recover the question: {e}.") from None
        key = (str(result["question_id"]), question)
        seen.add(key)
        ann = annotations.get(key)
        if ann is None:
            raise EvalInputError(
                f"{result_file}:{lineno}: no annotation for image_id={key[0]!r}, question={key[1]!r} in "
                f"{annotation_file}. Check that the answers come from llava_textvqa_val_v051_ocr.jsonl "
                "and the annotation file is TextVQA_0.5.1_val.json."
            )
        try:
            scores.append(evaluator.score(result["text"], ann["answers"]))
        except ValueError as e:
            raise EvalInputError(f"{annotation_file}: question_id {ann.get('question_id')}: {e}.") from None

    accuracy = 100.0 * sum(scores) / len(scores)
    unanswered = len(annotations) - len(seen)
    if unanswered > 0:
        # LLaVA averages over the answers given; say so loudly when that is not the whole split.
        warn(f"{unanswered} of {len(annotations)} annotated questions have no answer in {result_file}; "
             "the accuracy covers only the answered ones.")
    summary = {
        "benchmark": "textvqa",
        "result_file": os.path.abspath(result_file),
        "annotation_file": os.path.abspath(annotation_file),
        "samples": len(scores),
        "annotated_questions": len(annotations),
        "unanswered": max(unanswered, 0),
        "accuracy": accuracy,
    }
    write_json(output_json or default_summary_path(result_file), summary)
    return summary


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--annotation-file", required=True, help="TextVQA_0.5.1_val.json")
    parser.add_argument("--result-file", required=True, help="LLaVA answers jsonl")
    parser.add_argument(
        "--output-json", default=None, help="summary JSON (default: <result-file stem>_scores.json)"
    )
    args = parser.parse_args(argv)
    summary = eval_textvqa(args.annotation_file, args.result_file, args.output_json)
    print(f"Samples: {summary['samples']}")
    print(f"Accuracy: {summary['accuracy']:.2f}")
    return summary


if __name__ == "__main__":
    run_cli(main)
