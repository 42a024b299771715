"""Score a VLMEvalKit multiple-choice TSV (MMStar, AI2D) as VLMEvalKit's exact-matching evaluation does.

`eval_mmstar` and `eval_ai2d` are this scorer under their benchmark's name:

    python -m llava.eval.eval_mmstar --annotation-file MMStar.tsv --result-file A.jsonl --output-json O.json

Per question (every TSV row with an image; the answers come from `llava.eval.model_vqa_tsv`): the
answer's letter is `llava.eval.matching.can_infer(text, options)`, right when it equals the `answer`
cell. This is VLMEvalKit's `mcq_vanilla_eval` with the `exact_matching` judge. Where VLMEvalKit would
ask an LLM judge (the rules find no letter) the answer counts as wrong and is counted in `unmatched`.
Answers follow `llava.eval.answer_index`, keyed by `index` (the answer's `question_id`): two answers to
one index, an index that is not a row (with an image) of the TSV and an empty answers file are errors; a
question without an answer counts as wrong, with a warning and the count in `missing`.

Reported as VLMEvalKit's `report_acc` does, in percent: `overall` (the headline), and the accuracy per
`split`, `category` and `l2-category` when the TSV has those columns. Prints `Questions: N`,
`Accuracy: xx.xx` and `Unmatched: N`; the JSON summary defaults to `<result-file stem>_scores.json`.
"""

from __future__ import annotations

import argparse
import os

from llava.eval import default_summary_path, write_json
from llava.eval.matching import can_infer
from llava.eval.vlmeval_tsv import accuracy_by, answers_by_index, cell, choices, index_of, l2_category, read_questions


def score_rows(rows: list[dict], answers: dict[int, str]) -> list[dict]:
    items = []
    for row in rows:
        index = index_of(row)
        text = answers.get(index)
        pred = None if text is None else can_infer(text, choices(row))
        items.append({
            "index": index,
            "answer": row["answer"].strip(),
            "pred": pred,
            "missing": text is None,
            "unmatched": text is not None and pred is None,
            "correct": pred is not None and pred == row["answer"].strip(),
            "split": cell(row, "split"),
            "category": cell(row, "category"),
            "l2_category": l2_category(row),
        })
    return items


def eval_mcq(benchmark: str, display: str, annotation_file: str, result_file: str,
             output_json: str | None = None) -> dict:
    header, rows = read_questions(annotation_file, f"{display} TSV",
                                  required=("index", "question", "image", "answer"))
    answers = answers_by_index(result_file, f"{display} answers file", rows, annotation_file, display)
    items = score_rows(rows, answers)
    correct = sum(it["correct"] for it in items)
    summary = {
        "benchmark": benchmark,
        "annotation_file": os.path.abspath(annotation_file),
        "result_file": os.path.abspath(result_file),
        "questions": len(items),
        "correct": correct,
        "overall": 100.0 * correct / len(items),
        "unmatched": sum(it["unmatched"] for it in items),
        "missing": sum(it["missing"] for it in items),
        "per_split": accuracy_by(items, "split"),
        "per_category": accuracy_by(items, "category"),
        "per_l2_category": accuracy_by(items, "l2_category"),
    }
    write_json(output_json or default_summary_path(result_file), summary)
    return summary


def main_for(benchmark: str, display: str, doc: str, argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotation-file", required=True, help=f"the VLMEvalKit {display} TSV")
    parser.add_argument("--result-file", required=True, help="answers jsonl from llava.eval.model_vqa_tsv")
    parser.add_argument("--output-json", default=None,
                        help="summary JSON (default: <result-file stem>_scores.json)")
    args = parser.parse_args(argv)
    s = eval_mcq(benchmark, display, args.annotation_file, args.result_file, args.output_json)
    print(f"Questions: {s['questions']}")
    print(f"Accuracy: {s['overall']:.2f}")
    print(f"Unmatched: {s['unmatched']}")
    return s
