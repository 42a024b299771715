"""Score TextVQA answers (LLaVA's `eval_textvqa.py`).

    python -m llava.eval.eval_textvqa --annotation-file TextVQA_0.5.1_val.json --result-file A.jsonl \
        [--output-json O.json]

Each answer is matched to its annotation by (image_id, question.lower()), where image_id is the answer's
`question_id` and the question is recovered from the answer's `prompt`. The accuracy is the mean VQA
accuracy over every annotated question (`samples`).

Answers follow `llava.eval.answer_index`: two answers to one (image_id, question) are an error (LLaVA
would count both), as are an answer matching no annotation and an empty answers file; an annotated
question without an answer scores 0, with a warning and the count in `missing` (LLaVA averages over the
answers given, so a partial run would score the answered questions only). Prints `Samples: N` and
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
    write_json,
)
from llava.eval.answer_index import index_answers
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

    def key(result: dict) -> tuple[str, str]:
        try:
            return str(result["question_id"]), prompt_to_question(result["prompt"])
        except ValueError as e:
            raise ValueError(f"cannot recover the question: {e}.") from None

    index = index_answers(
        result_file, read_jsonl(result_file, "TextVQA answers file", required=("question_id", "prompt", "text")),
        benchmark="TextVQA", key=key, known=annotations, driver="llava.eval.model_vqa_loader",
        describe=lambda k: f"image_id={k[0]!r}, question={k[1]!r}",
        unknown=lambda k, _: (f"no annotation for image_id={k[0]!r}, question={k[1]!r} in {annotation_file}. "
                              "Check that the answers come from llava_textvqa_val_v051_ocr.jsonl and the "
                              "annotation file is TextVQA_0.5.1_val.json"),
    )
    missing = index.missing(annotations)
    evaluator = TextVQAAccuracyEvaluator()
    scores = []
    for k, ann in annotations.items():
        result = index.get(k)
        if result is None:
            scores.append(0.0)  # no answer: wrong
            continue
        try:
            scores.append(evaluator.score(result["text"], ann["answers"]))
        except ValueError as e:
            raise EvalInputError(f"{annotation_file}: question_id {ann.get('question_id')}: {e}.") from None

    summary = {
        "benchmark": "textvqa",
        "result_file": os.path.abspath(result_file),
        "annotation_file": os.path.abspath(annotation_file),
        "samples": len(scores),
        "answered": len(index),
        "missing": len(missing),
        "accuracy": 100.0 * sum(scores) / len(scores),
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
