"""Score MMMU dev+val (VLMEvalKit's MMMU_DEV_VAL.tsv) with MMMU's official parsing and matching.

    python -m llava.eval.eval_mmmu --annotation-file MMMU_DEV_VAL.tsv --result-file A.jsonl [--output-json O.json]

A row with option columns is a multiple-choice question: its letter is `parse_multi_choice(text,
options)` (`llava.eval.mmmu_parsing`), right when it equals the `answer` letter. A row without options
is an open question: right when `open_correct(answer, parse_open(text))`; an `answer` cell holding a
list literal ("['24/7', '3.429']") accepts any of its items. Where MMMU's parser would guess a letter at
random the answer counts as wrong and is counted in `unmatched`. Answers follow `llava.eval.answer_index`,
keyed by `index`: a repeated or unknown index and an empty answers file are errors; a question without an
answer counts as wrong, with a warning and the count in `missing`.

Accuracy in percent, as MMMU's main_eval_only.py aggregates it (per subject, per discipline, overall;
instance-weighted, i.e. plain accuracy). `overall`, the headline, is the accuracy on the validation
split, the number MMMU and VLMEvalKit report (over every row when the TSV has no `split` column or no
"validation" rows); `dev_val` is the accuracy over dev and validation together, `per_split` each split.
The subject comes from the `id` column ("validation_Art_Theory_3" -> Art_Theory, as MMMU derives it),
else from `category`; per-subject and per-discipline numbers are over the same rows as `overall`.
Prints `Questions: N`, `Accuracy: xx.xx` (overall) and `Dev+Val: xx.xx`.
"""

from __future__ import annotations

import argparse
import ast
import os

from llava.eval import default_summary_path, run_cli, write_json
from llava.eval.mmmu_parsing import open_correct, parse_multi_choice, parse_open
from llava.eval.vlmeval_tsv import accuracy_by, answers_by_index, cell, choices, index_of, read_questions

# MMMU's DOMAIN_CAT2SUB_CAT: the six disciplines and their 30 subjects.
DISCIPLINES = {
    "Art and Design": ("Art", "Art_Theory", "Design", "Music"),
    "Business": ("Accounting", "Economics", "Finance", "Manage", "Marketing"),
    "Science": ("Biology", "Chemistry", "Geography", "Math", "Physics"),
    "Health and Medicine": ("Basic_Medical_Science", "Clinical_Medicine", "Diagnostics_and_Laboratory_Medicine",
                            "Pharmacy", "Public_Health"),
    "Humanities and Social Science": ("History", "Literature", "Sociology", "Psychology"),
    "Tech and Engineering": ("Agriculture", "Architecture_and_Engineering", "Computer_Science", "Electronics",
                             "Energy_and_Power", "Materials", "Mechanical_Engineering"),
}
DISCIPLINE_OF = {subject: d for d, subjects in DISCIPLINES.items() for subject in subjects}
HEADLINE_SPLIT = "validation"


def subject_of(row: dict) -> str | None:
    qid = cell(row, "id")
    if qid and qid.count("_") >= 2:
        return "_".join(qid.split("_")[1:-1])
    return cell(row, "category")


def gold_answer(value: str) -> str | list[str]:
    text = value.strip()
    if len(text) > 1 and text[0] == "[" and text[-1] == "]":
        try:
            parsed = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return value
        if isinstance(parsed, list) and parsed:
            return [str(x) for x in parsed]
    return value


def score_row(row: dict, text: str | None) -> dict:
    options = choices(row)
    item = {"index": index_of(row), "type": "multiple-choice" if options else "open", "missing": text is None,
            "unmatched": False, "correct": False, "split": cell(row, "split"), "subject": subject_of(row)}
    item["discipline"] = DISCIPLINE_OF.get(item["subject"])
    if text is None:
        return item
    if options:
        letter = parse_multi_choice(text, options)
        item["pred"] = letter
        item["unmatched"] = letter is None
        gold = gold_answer(row["answer"])
        golds = gold if isinstance(gold, list) else [gold.strip()]
        item["correct"] = letter is not None and letter in golds
    else:
        preds = parse_open(text)
        item["pred"] = preds
        item["correct"] = open_correct(gold_answer(row["answer"]), preds)
    return item


def _accuracy(items: list[dict]) -> float | None:
    return 100.0 * sum(it["correct"] for it in items) / len(items) if items else None


def eval_mmmu(annotation_file: str, result_file: str, output_json: str | None = None) -> dict:
    _, rows = read_questions(annotation_file, "MMMU TSV", required=("index", "question", "image", "answer"))
    answers = answers_by_index(result_file, "MMMU answers file", rows, annotation_file, "MMMU")
    items = [score_row(row, answers.get(index_of(row))) for row in rows]
    headline = [it for it in items if it["split"] == HEADLINE_SPLIT] or items
    summary = {
        "benchmark": "mmmu",
        "annotation_file": os.path.abspath(annotation_file),
        "result_file": os.path.abspath(result_file),
        "questions": len(items),
        "overall": _accuracy(headline),
        "overall_questions": len(headline),
        "overall_split": HEADLINE_SPLIT if headline is not items else "all",
        "dev_val": _accuracy(items),
        "unmatched": sum(it["unmatched"] for it in items),
        "missing": sum(it["missing"] for it in items),
        "open_questions": sum(it["type"] == "open" for it in items),
        "per_split": accuracy_by(items, "split"),
        "per_type": accuracy_by(headline, "type"),
        "per_discipline": accuracy_by(headline, "discipline"),
        "per_subject": accuracy_by(headline, "subject"),
    }
    write_json(output_json or default_summary_path(result_file), summary)
    return summary


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotation-file", required=True, help="VLMEvalKit's MMMU_DEV_VAL.tsv")
    parser.add_argument("--result-file", required=True, help="answers jsonl from llava.eval.model_vqa_tsv")
    parser.add_argument("--output-json", default=None,
                        help="summary JSON (default: <result-file stem>_scores.json)")
    args = parser.parse_args(argv)
    s = eval_mmmu(args.annotation_file, args.result_file, args.output_json)
    print(f"Questions: {s['questions']}")
    print(f"Accuracy: {s['overall']:.2f}")
    print(f"Dev+Val: {s['dev_val']:.2f}")
    return s


if __name__ == "__main__":
    run_cli(main)
