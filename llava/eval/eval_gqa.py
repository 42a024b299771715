"""Score GQA testdev-balanced answers: LLaVA's `convert_gqa_for_eval.py` and GQA's `eval.py` in one step.

    python -m llava.eval.eval_gqa --question-file llava_gqa_testdev_balanced.jsonl \
        --annotation-file testdev_balanced_questions.json --result-file A.jsonl \
        [--output-json O.json] [--predictions-file testdev_balanced_predictions.json]

Conversion (LLaVA): the prediction is the answer text with trailing periods removed, then lower-cased.
Scoring (GQA's eval.py, `--tier testdev_balanced`): over the balanced questions (`isBalanced`) of the
annotation file that the LLaVA question file asks, a question is right when the prediction equals its
`answer` exactly. Reported in percent: `overall` (GQA's "Accuracy", the headline), `binary` (structural
type other than "query") and `open` ("query"); accuracy per structural type (`types.structural`: verify,
query, choose, logical, compare) and per semantic type (`types.semantic`: attr, cat, global, obj, rel),
per number of reasoning steps (the `semantic` program's operations, not counting those whose
"operation: argument" contains "exist", "query: name" or "choose name") and per number of words; and
`distribution`, GQA's chi-square match of predicted to gold answers per global group, divided by 100
(lower is better). Validity and plausibility need the choices file, which testdev does not ship; they
are left out (eval.py prints 0 for them), as are consistency and grounding, which LLaVA does not run.

Answers follow `llava.eval.answer_index`: two answers to one question_id, an answer whose question_id is
not in the question file and an empty answers file are errors (so is a question file entry without an
annotation). GQA's eval.py refuses to score when a question has no prediction; here it counts as wrong,
with a warning and the count in `missing`. Answers to questions of the question file that are not
balanced are not scored (`ignored`). --predictions-file also writes the converted predictions of the
scored questions in the format eval.py reads (`[{"questionId", "prediction"}]`).
Prints `Questions: N`, `Accuracy: xx.xx`, `Binary: xx.xx`, `Open: xx.xx`.
"""

from __future__ import annotations

import argparse
import os
from collections import defaultdict

from llava.eval import EvalInputError, default_summary_path, load_json, read_jsonl, run_cli, warn, write_json
from llava.eval.answer_index import index_answers

_NOT_A_STEP = ("exist", "query: name", "choose name")
_FIX = "Put GQA's testdev_balanced_questions.json (questions1.2) in gqa/data; see docs/Evaluation.md."


def convert(text: str) -> str:
    """LLaVA's convert_gqa_for_eval.py: rstrip('.') then lower()."""
    return text.rstrip(".").lower()


def steps_of(question: dict) -> int:
    return sum(1 for op in question["semantic"]
               if not any(word in f"{op.get('operation')}: {op.get('argument')}" for word in _NOT_A_STEP))


def chi_square(gold: dict, predicted: dict) -> float | None:
    """GQA's chiSquare: per group, sum over gold answers of (predicted - gold)^2 / gold, weighted by the
    group's size; None when no question has a global group (eval.py would divide by zero)."""
    total_score = total = 0.0
    for group, answers in gold.items():
        score = sum((predicted[group].get(a, 0) - n) ** 2 / n for a, n in answers.items())
        size = sum(answers.values())
        total_score += score * size
        total += size
    return total_score / total if total else None


def load_annotations(path: str) -> dict:
    data = load_json(path, "GQA annotation file", _FIX)
    if not isinstance(data, dict):
        raise EvalInputError(f"{path}: expected a JSON object of questionId -> question. {_FIX}")
    return data


def _check_question(qid: str, q, path: str) -> None:
    ok = isinstance(q, dict) and all(k in q for k in ("answer", "question", "semantic", "types", "isBalanced"))
    ok = ok and isinstance(q["semantic"], list) and all(isinstance(op, dict) for op in q["semantic"])
    if not ok or not isinstance(q["types"], dict) or not all(k in q["types"] for k in ("structural", "semantic")):
        raise EvalInputError(f"{path}: question {qid} lacks answer / question / semantic / types.structural / "
                             f"types.semantic / isBalanced; is this GQA's testdev_balanced_questions.json? {_FIX}")


def _bucket(items: list[tuple], numeric: bool = False) -> dict:
    """(key, score) pairs -> {key: {"accuracy" (%), "questions"}}, keys sorted."""
    groups: dict = defaultdict(list)
    for key, score in items:
        groups[key].append(score)
    keys = sorted(groups, key=(lambda k: int(k)) if numeric else None)
    return {str(k): {"accuracy": 100.0 * sum(groups[k]) / len(groups[k]), "questions": len(groups[k])}
            for k in keys}


def eval_gqa(question_file: str, annotation_file: str, result_file: str, output_json: str | None = None,
             predictions_file: str | None = None) -> dict:
    questions = read_jsonl(question_file, "GQA question file", required=("question_id", "text"),
                           fix="Use LLaVA's llava_gqa_testdev_balanced.jsonl (eval.zip).")
    annotations = load_annotations(annotation_file)
    asked: dict[str, None] = {}
    for lineno, q in questions:
        qid = str(q["question_id"])
        if qid not in annotations:
            raise EvalInputError(f"{question_file}:{lineno}: question_id {qid} is not in {annotation_file}; "
                                 "use the annotation file of the split the questions come from.")
        _check_question(qid, annotations[qid], annotation_file)
        asked[qid] = None

    scored = [qid for qid in asked if annotations[qid]["isBalanced"]]
    index = index_answers(
        result_file, read_jsonl(result_file, "GQA answers file", required=("question_id", "text")),
        benchmark="GQA", key=lambda ans: str(ans["question_id"]), known=asked, scored=set(scored),
        scored_name="balanced questions", driver="llava.eval.model_vqa_loader",
        unknown=lambda qid, _: f"question_id {qid} is not in {question_file}",
    )
    predictions = {qid: convert(str(ans["text"])) for qid, ans in index.items()}
    missing = index.missing(scored)
    not_asked = sum(1 for q in annotations.values() if isinstance(q, dict) and q.get("isBalanced")) - len(scored)
    if not_asked > 0:
        warn(f"{not_asked} balanced questions of {annotation_file} are not in {question_file} and are not scored.")

    results, by_type, gold_dist, pred_dist = [], defaultdict(list), defaultdict(dict), defaultdict(dict)
    for qid in scored:
        q = annotations[qid]
        pred = predictions.get(qid)
        score = float(pred is not None and pred == q["answer"])
        results.append(score)
        structural = q["types"]["structural"]
        by_type["structural"].append((structural, score))
        by_type["semantic"].append((q["types"]["semantic"], score))
        by_type["steps"].append((steps_of(q), score))
        by_type["words"].append((len(q["question"].split()), score))
        by_type["open" if structural == "query" else "binary"].append((None, score))
        group = (q.get("groups") or {}).get("global")
        if group is not None:
            gold_dist[group][q["answer"]] = gold_dist[group].get(q["answer"], 0) + 1
            pred_dist[group][pred] = pred_dist[group].get(pred, 0) + 1

    def mean(pairs: list) -> float | None:
        return 100.0 * sum(s for _, s in pairs) / len(pairs) if pairs else None

    chi2 = chi_square(gold_dist, pred_dist)
    summary = {
        "benchmark": "gqa",
        "question_file": os.path.abspath(question_file),
        "annotation_file": os.path.abspath(annotation_file),
        "result_file": os.path.abspath(result_file),
        "questions": len(scored),
        "correct": int(sum(results)),
        "missing": len(missing),
        "ignored": index.ignored,
        "overall": 100.0 * sum(results) / len(scored) if scored else None,
        "binary": mean(by_type["binary"]),
        "open": mean(by_type["open"]),
        "distribution": chi2 / 100 if chi2 is not None else None,
        "per_structural_type": _bucket(by_type["structural"]),
        "per_semantic_type": _bucket(by_type["semantic"]),
        "per_steps": _bucket(by_type["steps"], numeric=True),
        "per_words": _bucket(by_type["words"], numeric=True),
    }
    if predictions_file:
        write_json(predictions_file, [{"questionId": qid, "prediction": p} for qid, p in predictions.items()],
                   indent=None)
        summary["predictions_file"] = os.path.abspath(predictions_file)
    write_json(output_json or default_summary_path(result_file), summary)
    return summary


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--question-file", required=True, help="LLaVA's llava_gqa_testdev_balanced.jsonl")
    parser.add_argument("--annotation-file", required=True, help="GQA's testdev_balanced_questions.json")
    parser.add_argument("--result-file", required=True, help="answers jsonl from llava.eval.model_vqa_loader")
    parser.add_argument("--output-json", default=None,
                        help="summary JSON (default: <result-file stem>_scores.json)")
    parser.add_argument("--predictions-file", default=None,
                        help="also write the predictions in the format GQA's eval.py reads")
    args = parser.parse_args(argv)
    s = eval_gqa(args.question_file, args.annotation_file, args.result_file, args.output_json,
                 args.predictions_file)
    print(f"Questions: {s['questions']}")
    for name, key in (("Accuracy", "overall"), ("Binary", "binary"), ("Open", "open")):
        if s[key] is not None:
            print(f"{name}: {s[key]:.2f}")
    return s


if __name__ == "__main__":
    run_cli(main)
