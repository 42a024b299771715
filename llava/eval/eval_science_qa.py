"""Score ScienceQA answers (LLaVA-1.5's `eval_science_qa.py`).

    python -m llava.eval.eval_science_qa --base-dir playground/data/eval/scienceqa --result-file A.jsonl \
        --output-file A_output.jsonl --output-result A_result.json [--split test] [--output-json S.json]

Parsing of each answer's `text`, in order (LLaVA-1.5's rules):
  1. the text is exactly one of A-E -> that letter;
  2. len(text) >= 3, text[0] is one of A-E and text[1:3] == ". " -> text[0]  ("B. a cat");
  3. the regex `The answer is ([A-Z]).` has exactly one match -> its letter;
  4. otherwise "FAILED".
A letter beyond the problem's number of choices, and FAILED, map to index -1 (wrong). Upstream once
picked a random choice for unparsed answers; this scorer never does.

Answers follow `llava.eval.answer_index`, keyed by problem id (`question_id`): two answers to one problem,
an answer to a problem not in problems.json and an empty answers file are errors; a problem of the split
with no answer counts as FAILED (wrong), with a warning and the count in `missing`; answers to problems of
other splits are ignored and counted in `ignored`.

Prints `Total: N, Correct: C, Accuracy: xx.xx%, IMG-Accuracy: xx.xx%` (LLaVA's line) and the grep-able
`Accuracy: xx.xx` and `IMG-Accuracy: xx.xx` lines; anchor greps (`^Accuracy:`) since the first line holds
both names. IMG counts the problems whose answer `prompt` contains "<image>" (the reported SQA-IMG
figure); for a problem with no answer the problems.json `image` field decides instead, so missing answers
count as wrong rather than silently leaving the IMG denominator.

Writes --output-file (one JSON line per problem with the parsed answer), --output-result
(`{acc, correct, count, results{pid: idx}, outputs{pid: text}}`) and a summary JSON (default: next to the
result file).
"""

from __future__ import annotations

import argparse
import json
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

OPTIONS = ("A", "B", "C", "D", "E")
_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")
FAILED = "FAILED"


def parse_answer(text: str, options: tuple[str, ...] = OPTIONS) -> str:
    """Return the answer letter, or "FAILED"; see the module docstring for the rules."""
    if text in options:
        return text
    if len(text) >= 3 and text[0] in options and text[1:3] == ". ":
        return text[0]
    found = _ANSWER_IS.findall(text)
    if len(found) == 1:
        return found[0]
    return FAILED


def answer_index(answer: str, num_choices: int, options: tuple[str, ...] = OPTIONS) -> int:
    """Index of the chosen option, or -1 for FAILED or a letter past the problem's choices."""
    if answer in options[:num_choices]:
        return options.index(answer)
    return -1


def _pct(num: int, den: int) -> float:
    return 100.0 * num / den if den else float("nan")


def eval_science_qa(
    base_dir: str,
    result_file: str,
    output_file: str,
    output_result: str,
    split: str = "test",
    output_json: str | None = None,
) -> dict:
    fix = "Put pid_splits.json and problems.json from lupantech/ScienceQA data/scienceqa in --base-dir."
    splits = load_json(os.path.join(base_dir, "pid_splits.json"), "ScienceQA pid_splits.json", fix)
    problems = load_json(os.path.join(base_dir, "problems.json"), "ScienceQA problems.json", fix)
    if split not in splits:
        raise EvalInputError(
            f"split {split!r} not in {os.path.join(base_dir, 'pid_splits.json')} "
            f"(has {', '.join(sorted(splits))}); pass --split with one of those."
        )
    scored = [str(pid) for pid in splits[split]]
    predictions = index_answers(
        result_file, read_jsonl(result_file, "ScienceQA answers file", required=("question_id", "text")),
        benchmark=f"ScienceQA {split}", key=lambda pred: str(pred["question_id"]), known=problems,
        scored=set(scored), scored_name=f"{split!r} split", describe=lambda pid: f"problem {pid!r}",
        driver="llava.eval.model_vqa_science",
        unknown=lambda pid, _: f"question_id {pid!r} is not a problem of {os.path.join(base_dir, 'problems.json')}",
    )
    missing = len(predictions.missing(scored))

    records = []
    sqa_results = {"acc": None, "correct": None, "count": None, "results": {}, "outputs": {}}
    for pid in scored:
        prob = problems.get(pid)
        if prob is None:
            raise EvalInputError(f"problem {pid} of split {split!r} is not in problems.json; re-download it.")
        for key in ("choices", "answer"):
            if key not in prob:
                raise EvalInputError(f"problems.json: problem {pid} lacks {key!r}; re-download it.")
        pred = predictions.get(pid)
        if pred is None:
            text, prompt = FAILED, None
            is_multimodal = bool(prob.get("image"))
        else:
            text, prompt = pred["text"], pred.get("prompt", "")
            is_multimodal = "<image>" in prompt
        answer = parse_answer(text)
        idx = answer_index(answer, len(prob["choices"]))
        correct = idx == prob["answer"]
        records.append({
            "question_id": pid,
            "parsed_ans": answer,
            "pred_idx": idx,
            "ground_truth": OPTIONS[prob["answer"]],
            "question": prompt,
            "pred": text,
            "is_multimodal": is_multimodal,
            "correct": correct,
        })
        sqa_results["results"][pid] = idx
        sqa_results["outputs"][pid] = text

    total = len(records)
    correct = sum(r["correct"] for r in records)
    img = [r for r in records if r["is_multimodal"]]
    img_correct = sum(r["correct"] for r in img)
    failed = sum(r["parsed_ans"] == FAILED for r in records)
    sqa_results["acc"] = _pct(correct, total)
    sqa_results["correct"] = correct
    sqa_results["count"] = total

    os.makedirs(os.path.dirname(os.path.abspath(output_file)), exist_ok=True)
    with open(output_file, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    write_json(output_result, sqa_results)
    summary = {
        "benchmark": "scienceqa",
        "split": split,
        "result_file": os.path.abspath(result_file),
        "total": total,
        "correct": correct,
        "accuracy": sqa_results["acc"],
        "img_total": len(img),
        "img_correct": img_correct,
        "img_accuracy": _pct(img_correct, len(img)),
        "failed": failed,
        "missing": missing,
        "ignored": predictions.ignored,
    }
    write_json(output_json or default_summary_path(result_file), summary)
    return summary


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base-dir", required=True, help="folder with pid_splits.json and problems.json")
    parser.add_argument("--result-file", required=True, help="LLaVA answers jsonl (model_vqa_science)")
    parser.add_argument("--output-file", required=True, help="per-problem jsonl with the parsed answers")
    parser.add_argument("--output-result", required=True, help="result JSON {acc, correct, count, ...}")
    parser.add_argument("--split", default="test")
    parser.add_argument(
        "--output-json", default=None, help="summary JSON (default: <result-file stem>_scores.json)"
    )
    args = parser.parse_args(argv)
    s = eval_science_qa(
        args.base_dir, args.result_file, args.output_file, args.output_result, args.split, args.output_json
    )
    print(f"Total: {s['total']}, Correct: {s['correct']}, Accuracy: {s['accuracy']:.2f}%, "
          f"IMG-Accuracy: {s['img_accuracy']:.2f}%")
    print(f"Accuracy: {s['accuracy']:.2f}")
    print(f"IMG-Accuracy: {s['img_accuracy']:.2f}")
    return s


if __name__ == "__main__":
    run_cli(main)
