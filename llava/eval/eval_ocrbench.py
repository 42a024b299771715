"""Score OCRBench (VLMEvalKit's OCRBench.tsv) with VLMEvalKit's `OCRBench.evaluate` rules.

    python -m llava.eval.eval_ocrbench --annotation-file OCRBench.tsv --result-file A.jsonl [--output-json O.json]

Each question's `answer` cell is a Python list literal of accepted answers ("['Centre', 'centre']"; any
other cell is taken as the one answer). A question scores 1 if some accepted answer is a substring of
the prediction after normalising both:
- category "Handwritten Mathematical Expression Recognition": strip, newlines to spaces, then every
  space removed;
- every other category: lower-case, strip, newlines to spaces.
Answers follow `llava.eval.answer_index`, keyed by `index`: a repeated or unknown index and an empty
answers file are errors; a question without an answer scores 0 (VLMEvalKit would see pandas' "nan" there;
the difference is nil in practice), with a warning and the count in `missing`.
Per-category totals are counts out of the category's questions; the five reported groups are Text
Recognition (the six recognition categories summed), Scene Text-centric VQA, Doc-oriented VQA, Key
Information Extraction and Handwritten Mathematical Expression Recognition; `overall` is their sum, out
of 1000 on the full benchmark (VLMEvalKit's "Final Score"; `final_score_norm` is it / 10).
Prints one `<group>: N` line per group and `Final Score: N`.
"""

from __future__ import annotations

import argparse
import ast
import os

from llava.eval import EvalInputError, default_summary_path, run_cli, write_json
from llava.eval.vlmeval_tsv import answers_by_index, cell, index_of, read_questions

TEXT_RECOGNITION = (
    "Regular Text Recognition", "Irregular Text Recognition", "Artistic Text Recognition",
    "Handwriting Recognition", "Digit String Recognition", "Non-Semantic Text Recognition",
)
HME = "Handwritten Mathematical Expression Recognition"
OTHER_GROUPS = ("Scene Text-centric VQA", "Doc-oriented VQA", "Key Information Extraction", HME)
CATEGORIES = TEXT_RECOGNITION + OTHER_GROUPS


def parse_answers(value: str) -> list[str]:
    """The accepted answers of an `answer` cell: its list literal's items, or the cell itself."""
    try:
        answers = ast.literal_eval(value)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return [value]
    if isinstance(answers, (list, tuple)):
        return [str(a) for a in answers]
    return [value]  # a plain string or number: the text itself is the answer


def _normalise(text: str, category: str) -> str:
    if category == HME:
        return text.strip().replace("\n", " ").replace(" ", "")
    return text.lower().strip().replace("\n", " ")


def is_correct(prediction: str, answers: list[str], category: str) -> bool:
    pred = _normalise(prediction, category)
    return any(_normalise(answer, category) in pred for answer in answers)


def eval_ocrbench(annotation_file: str, result_file: str, output_json: str | None = None) -> dict:
    _, rows = read_questions(annotation_file, "OCRBench TSV",
                             required=("index", "question", "image", "answer", "category"))
    answers = answers_by_index(result_file, "OCRBench answers file", rows, annotation_file, "OCRBench")
    scores = {c: 0 for c in CATEGORIES}
    counts = {c: 0 for c in CATEGORIES}
    for row in rows:
        category = cell(row, "category")
        if category not in scores:
            raise EvalInputError(f"{row['_source']}: category {category!r} is not an OCRBench category "
                                 f"({', '.join(CATEGORIES)}).")
        counts[category] += 1
        text = answers.get(index_of(row))
        if text is not None and is_correct(text, parse_answers(row["answer"]), category):
            scores[category] += 1
    groups = {"Text Recognition": sum(scores[c] for c in TEXT_RECOGNITION)}
    groups.update({g: scores[g] for g in OTHER_GROUPS})
    total = sum(groups.values())
    summary = {
        "benchmark": "ocrbench",
        "annotation_file": os.path.abspath(annotation_file),
        "result_file": os.path.abspath(result_file),
        "questions": len(rows),
        "missing": len(rows) - len(answers),
        "overall": total,
        "final_score_norm": total / 10,
        "groups": groups,
        "categories": {c: {"score": scores[c], "questions": counts[c]} for c in CATEGORIES},
    }
    write_json(output_json or default_summary_path(result_file), summary)
    return summary


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotation-file", required=True, help="VLMEvalKit's OCRBench.tsv")
    parser.add_argument("--result-file", required=True, help="answers jsonl from llava.eval.model_vqa_tsv")
    parser.add_argument("--output-json", default=None,
                        help="summary JSON (default: <result-file stem>_scores.json)")
    args = parser.parse_args(argv)
    s = eval_ocrbench(args.annotation_file, args.result_file, args.output_json)
    for name, value in s["groups"].items():
        print(f"{name}: {value}")
    print(f"Final Score: {s['overall']}")
    return s


if __name__ == "__main__":
    run_cli(main)
