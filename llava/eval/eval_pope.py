"""Score POPE answers (LLaVA's `eval_pope.py`): accuracy, precision, recall, F1 and yes-ratio per split.

    python -m llava.eval.eval_pope --annotation-dir playground/data/eval/pope/coco \
        --question-file llava_pope_test.jsonl --result-file A.jsonl [--output-json O.json]

Splits: the `category` of the question file's lines (adversarial, popular, random), each scored against
`<annotation-dir>/coco_pope_<category>.json` (JSON lines with `label` "yes"/"no"). LLaVA pairs the k-th
answer of a split with the k-th label line; here the k-th question of that split in the question file
is paired with the k-th label (the same pairing when the answers are in question order, as the drivers
write them), the answer is found by `question_id`, and a label line whose `image` differs from its
question's is an error instead of a silent shift.

Answer rule (LLaVA): keep the text before the first "."; delete ","; split on single spaces; "no" if
one of the words is exactly "No", "no" or "not", else "yes". Positive = "yes". Per split, in percent:
accuracy = (TP+TN)/N, precision = TP/(TP+FP), recall = TP/(TP+FN), F1 = 2PR/(P+R), yes-ratio = share of
"yes" answers (LLaVA prints fractions and divides by zero where these are 0/0; here 0/0 gives 0).
`overall` is the mean F1 of the splits (the number LLaVA-1.5 and pruning papers report for POPE).

Answers follow `llava.eval.answer_index`: a repeated or unknown question_id and an empty answers file are
errors. A question without an answer is a wrong prediction, the opposite of its label: a "yes" question
counts as a "no" answer (FN), a "no" question as a "yes" answer (FP). So it lowers accuracy, and recall
(label yes) or precision (label no), and enters the yes-ratio as the answer it is taken for; every split's
numbers are over all its questions, with a warning and the count in `missing` per split and in total.
(LLaVA's pairing by position would instead shift every later answer onto the wrong label.)
Prints `<split>: acc / precision / recall / F1 / yes-ratio` lines, then `F1 (mean): xx.xx`.
"""

from __future__ import annotations

import argparse
import os

from llava.eval import EvalInputError, default_summary_path, read_jsonl, run_cli, write_json
from llava.eval.answer_index import index_answers

_FIX = "See docs/Evaluation.md for the POPE files."
OPPOSITE = {"yes": "no", "no": "yes"}


def pope_answer(text: str) -> str:
    """LLaVA's eval_pope answer normalisation: "yes" or "no"."""
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def _ratio(num: int, den: int) -> float:
    return 100.0 * num / den if den else 0.0


def split_metrics(preds: list[str], labels: list[str]) -> dict:
    tp = sum(p == "yes" and g == "yes" for p, g in zip(preds, labels, strict=True))
    fp = sum(p == "yes" and g == "no" for p, g in zip(preds, labels, strict=True))
    tn = sum(p == "no" and g == "no" for p, g in zip(preds, labels, strict=True))
    fn = sum(p == "no" and g == "yes" for p, g in zip(preds, labels, strict=True))
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"samples": len(preds), "tp": tp, "fp": fp, "tn": tn, "fn": fn,
            "accuracy": _ratio(tp + tn, len(preds)), "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": _ratio(preds.count("yes"), len(preds))}


def _questions_by_split(question_file: str) -> dict[str, list[tuple[int, dict]]]:
    lines = read_jsonl(question_file, "POPE question file", required=("question_id", "image", "text", "category"),
                       fix="Use LLaVA's llava_pope_test.jsonl (eval.zip).")
    seen: set[str] = set()
    splits: dict[str, list[tuple[int, dict]]] = {}
    for lineno, q in lines:
        qid = str(q["question_id"])
        if qid in seen:
            raise EvalInputError(f"{question_file}:{lineno}: question_id {qid} appears twice; the answers could "
                                 "not be told apart. Use LLaVA's llava_pope_test.jsonl.")
        seen.add(qid)
        splits.setdefault(str(q["category"]), []).append((lineno, q))
    if not splits:
        raise EvalInputError(f"{question_file} has no questions.")
    return splits


def _labels(annotation_dir: str, split: str, questions: list[tuple[int, dict]], question_file: str) -> list[str]:
    path = os.path.join(annotation_dir, f"coco_pope_{split}.json")
    lines = read_jsonl(path, f"POPE {split} annotation file", required=("label",), fix=_FIX)
    if len(lines) != len(questions):
        raise EvalInputError(f"{path} has {len(lines)} labels but {question_file} has {len(questions)} {split} "
                             "questions; they are paired in order, so the counts must agree.")
    labels = []
    for (lineno, ann), (qline, q) in zip(lines, questions, strict=True):
        label = ann["label"]
        if label not in ("yes", "no"):
            raise EvalInputError(f"{path}:{lineno}: label {label!r} is neither 'yes' nor 'no'.")
        if "image" in ann and ann["image"] != q["image"]:
            raise EvalInputError(f"{path}:{lineno} is about {ann['image']} but its question "
                                 f"({question_file}:{qline}) is about {q['image']}: the files are out of order.")
        labels.append(label)
    return labels


def eval_pope(annotation_dir: str, question_file: str, result_file: str, output_json: str | None = None) -> dict:
    if not os.path.isdir(annotation_dir):
        raise EvalInputError(f"POPE annotation folder not found: {annotation_dir}. {_FIX}")
    splits = _questions_by_split(question_file)
    labels = {split: _labels(annotation_dir, split, qs, question_file) for split, qs in splits.items()}
    known = {str(q["question_id"]) for qs in splits.values() for _, q in qs}
    index = index_answers(
        result_file, read_jsonl(result_file, "POPE answers file", required=("question_id", "text")),
        benchmark="POPE", key=lambda ans: str(ans["question_id"]), known=known, driver="llava.eval.model_vqa_loader",
        unknown=lambda qid, _: f"question_id {qid} is not in {question_file}",
    )
    index.missing(str(q["question_id"]) for qs in splits.values() for _, q in qs)

    results = {}
    for split, qs in splits.items():
        preds, missing = [], 0
        for (_, q), label in zip(qs, labels[split], strict=True):
            ans = index.get(str(q["question_id"]))
            if ans is None:
                missing += 1
                preds.append(OPPOSITE[label])  # a missing answer is a wrong prediction: FN if "yes", FP if "no"
            else:
                preds.append(pope_answer(str(ans["text"])))
        results[split] = {**split_metrics(preds, labels[split]), "questions": len(qs), "missing": missing}
    summary = {
        "benchmark": "pope",
        "annotation_dir": os.path.abspath(annotation_dir),
        "question_file": os.path.abspath(question_file),
        "result_file": os.path.abspath(result_file),
        "overall": sum(r["f1"] for r in results.values()) / len(results),
        "accuracy": sum(r["accuracy"] for r in results.values()) / len(results),
        "questions": sum(r["questions"] for r in results.values()),
        "missing": sum(r["missing"] for r in results.values()),
        "splits": results,
    }
    write_json(output_json or default_summary_path(result_file), summary)
    return summary


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotation-dir", required=True, help="folder with coco_pope_<split>.json")
    parser.add_argument("--question-file", required=True, help="LLaVA's llava_pope_test.jsonl")
    parser.add_argument("--result-file", required=True, help="answers jsonl from llava.eval.model_vqa_loader")
    parser.add_argument("--output-json", default=None,
                        help="summary JSON (default: <result-file stem>_scores.json)")
    args = parser.parse_args(argv)
    s = eval_pope(args.annotation_dir, args.question_file, args.result_file, args.output_json)
    for split, r in s["splits"].items():
        print(f"{split}: acc {r['accuracy']:.2f} / precision {r['precision']:.2f} / recall {r['recall']:.2f}"
              f" / F1 {r['f1']:.2f} / yes-ratio {r['yes_ratio']:.2f} ({r['samples']} samples)")
    print(f"F1 (mean): {s['overall']:.2f}")
    return s


if __name__ == "__main__":
    run_cli(main)
