"""MMBench / MMBench-CN: the submission xlsx and, when the TSV has answers, a local CircularEval score.

    python -m llava.eval.eval_mmbench --annotation-file mmbench_dev_20230712.tsv \
        --result-file answers/mmbench_dev_20230712/ckpt.jsonl \
        --upload-dir answers_upload/mmbench_dev_20230712 --experiment ckpt [--output-json O.json]

(a) Submission, as LLaVA's `convert_mmbench_for_submission.py`: the TSV minus the columns hint,
    category, source, image, comment and l2-category, with a `prediction` column (the raw answer `text`,
    matched on `index`) inserted at position 6, written to `<upload-dir>/<experiment>.xlsx`. Cells read as
    missing by pandas are left empty and all-numeric columns are written as numbers, as pandas would.

(b) Local score, only when the TSV has an `answer` column (the dev splits). The answer letter is taken
    from the text by the first rule that gives a letter among the row's options (A-D, up to the first
    missing one):
      1. the whole text is a letter, optionally in parentheses or followed by ".", ":" or ")":
         "B", "B.", "(B)";
      2. the text starts with such a letter plus punctuation and whitespace: "B. a cat", "(B) a cat", "B: x";
      3. "answer is X", "answer: X", "Answer: (X)", "answer X" or Chinese "答案是X"/"答案：X" anywhere,
         if all such mentions of option letters name the same one;
      4. the text, minus surrounding spaces and a final period, equals exactly one option (case-insensitive).
    Anything else is unparseable and counts as wrong, as does a row without an answer. This is a simple
    local stand-in for the OpenCompass server, which also asks an LLM to map free-form text to an option,
    so with LLaVA's single-letter answers both agree; the official number is the server's.
    CircularEval groups rows by `index % 1_000_000` (the TSV holds the circular copies at index + k*10^6)
    and counts a group as correct only if every copy present is correct. SingleEval is plain per-row
    accuracy. Prints `CircularEval: xx.xx` and `SingleEval: xx.xx`; the JSON summary (default: next to the
    result file) adds per-category circular accuracy.

Answers follow `llava.eval.answer_index`, keyed by (index, round_id): two answers to one key, an index
that is not a row of the TSV (or a round past the row's options) and an empty answers file are errors. Only
round 0 (the options in the TSV's order) is scored and submitted; --all-rounds answers to the rotated
rounds are ignored and counted in `ignored`. A row without a round-0 answer counts as wrong (and fails its
circular group), with a warning and the count in `missing`; its prediction cell is left empty.

MMBench-CN works the same way; everything is read and written as UTF-8.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import sys

from llava.eval import (
    EvalInputError,
    default_summary_path,
    read_jsonl,
    run_cli,
    write_json,
)
from llava.eval.answer_index import AnswerIndex, index_answers

DROP_COLUMNS = ("hint", "category", "source", "image", "comment", "l2-category")
PREDICTION_POSITION = 6
OPTION_LETTERS = ("A", "B", "C", "D")
CIRCULAR_STRIDE = 1_000_000
# pandas.read_table's default NA strings: such cells come out of LLaVA's conversion as empty xlsx cells.
PANDAS_NA = frozenset(
    ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>"]
    + ["N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"]
)
_INT = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")

_LETTER_ONLY = re.compile(r"^(?:\(([A-Z])\)|([A-Z])[.:)]?)$")
_LETTER_PREFIX = re.compile(r"^(?:\(([A-Z])\)|([A-Z])[.:)])\s")
_ANSWER_IS = re.compile(
    r"[Aa]nswer(?:\s+is)?\s*[:：]?\s*[(（]?([A-Z])(?![A-Za-z])"
    r"|答案\s*(?:是|为)?\s*[:：]?\s*[(（]?([A-Z])(?![A-Za-z])"
)


def is_missing(value: str | None) -> bool:
    """The driver's notion of an absent option or hint: None, empty, 'nan' or 'none' in any case."""
    return value is None or value.strip().lower() in ("", "nan", "none")


def read_tsv(path: str, what: str = "MMBench TSV") -> tuple[list[str], list[dict[str, str]]]:
    """Read an MMBench TSV (header row, tab-separated, base64 images) into dicts keyed by column.

    VLMEvalKit's TSVs (MMStar, AI2D, OCRBench, MMMU) have the same layout; `what` names the file in errors.
    """
    if not os.path.isfile(path):
        raise EvalInputError(
            f"{what} not found: {path}. Download it (see docs/Evaluation.md) into playground/data/eval."
        )
    # Base64 images are far larger than csv's default 128 KiB field limit.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if not header or "index" not in header:
            raise EvalInputError(f"{path}: the first line must be a header with an 'index' column.")
        rows = []
        for values in reader:
            if not values:
                continue
            if len(values) != len(header):
                raise EvalInputError(
                    f"{path}:{reader.line_num}: {len(values)} fields, header has {len(header)}. "
                    f"The file is truncated or is not a valid {what}; re-download it."
                )
            row = dict(zip(header, values, strict=True))
            if not _INT.match(row["index"].strip()):
                raise EvalInputError(f"{path}:{reader.line_num}: index {row['index']!r} is not an integer.")
            rows.append(row)
    return header, rows


def row_options(row: dict[str, str]) -> dict[str, str]:
    """Option letter -> text, stopping at the first missing option, as the driver builds the prompt."""
    options = {}
    for letter in OPTION_LETTERS:
        value = row.get(letter)
        if is_missing(value):
            break
        options[letter] = value
    return options


def extract_letter(text: str, options: dict[str, str]) -> str | None:
    """The answer letter per the module docstring's rules, or None when unparseable."""
    text = text.strip()
    for pattern in (_LETTER_ONLY, _LETTER_PREFIX):
        m = pattern.match(text)
        if m:
            letter = m.group(1) or m.group(2)
            if letter in options:
                return letter
    # Letters that are not options ("the answer is I think ...") are ignored rather than disqualifying.
    mentioned = {a or b for a, b in _ANSWER_IS.findall(text)} & options.keys()
    if len(mentioned) == 1:
        letter = mentioned.pop()
        if letter in options:
            return letter

    def norm(s: str) -> str:
        return s.strip().rstrip(".").strip().lower()

    hits = [letter for letter, option in options.items() if norm(option) == norm(text)]
    return hits[0] if len(hits) == 1 else None


def load_predictions(result_file: str, rows: list[dict[str, str]], annotation_file: str) -> AnswerIndex:
    """(index, round) -> answer record, by `llava.eval.answer_index`'s rule. A row's rounds are 0 up to its
    number of options (--all-rounds); only round 0, the options in the TSV's order, is scored, and answers
    to rotated rounds are ignored (counted)."""
    known = {(int(r["index"]), round_id) for r in rows for round_id in range(max(1, len(row_options(r))))}

    def key(ans: dict) -> tuple[int, int]:
        try:
            index = int(ans["question_id"])
        except (TypeError, ValueError):
            raise ValueError(f"question_id {ans['question_id']!r} is not an MMBench index.") from None
        try:
            return index, int(ans.get("round_id", 0) or 0)
        except (TypeError, ValueError):
            raise ValueError(f"round_id {ans['round_id']!r} is not a round number.") from None

    return index_answers(
        result_file, read_jsonl(result_file, "MMBench answers file", required=("question_id", "text")),
        benchmark="MMBench", key=key, known=known, scored={k for k in known if k[1] == 0},
        scored_name="round-0 questions", describe=lambda k: f"index {k[0]} round {k[1]}",
        driver="llava.eval.model_vqa_mmbench",
        unknown=lambda k, _: (f"index {k[0]} round {k[1]} is not a question of {annotation_file}"
                              + ("" if (k[0], 0) not in known else " (the row has fewer options)")),
    )


def _typed_column(values: list[str]) -> list:
    """Mimic pandas' dtype inference for one column: ints, floats (ints + NA too) or strings."""
    present = [v for v in values if v not in PANDAS_NA]
    has_na = len(present) != len(values)
    if present and all(_INT.match(v) for v in present):
        cast = float if has_na else int
    elif present and all(_FLOAT.match(v) for v in present):
        cast = float
    else:
        cast = str
    return [None if v in PANDAS_NA else cast(v) for v in values]


def write_submission(header: list[str], rows: list[dict[str, str]], predictions: dict[int, str],
                     path: str) -> list[str]:
    try:
        from openpyxl import Workbook
        from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
    except ImportError:
        raise EvalInputError(
            "writing the MMBench submission needs openpyxl: pip install openpyxl"
        ) from None
    columns = [c for c in header if c not in DROP_COLUMNS]
    typed = {c: _typed_column([r[c] for r in rows]) for c in columns}
    preds = []
    for r in rows:
        text = predictions.get(int(r["index"]))
        # openpyxl refuses control characters; they carry no meaning in an answer.
        preds.append(None if text is None else ILLEGAL_CHARACTERS_RE.sub("", text))
    position = min(PREDICTION_POSITION, len(columns))
    columns.insert(position, "prediction")
    typed["prediction"] = preds

    wb = Workbook()
    ws = wb.active
    ws.title = "Sheet1"
    ws.append(columns)
    for i in range(len(rows)):
        ws.append([typed[c][i] for c in columns])
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    wb.save(path)
    return columns


def circular_score(rows: list[dict[str, str]], predictions: dict[int, str]) -> dict:
    per_row = []
    for r in rows:
        index = int(r["index"])
        text = predictions.get(index)
        options = row_options(r)
        letter = None if text is None else extract_letter(text, options)
        per_row.append({
            "index": index,
            "group": index % CIRCULAR_STRIDE,
            "answer": r["answer"].strip(),
            "pred": letter,
            "missing": text is None,
            "correct": letter is not None and letter == r["answer"].strip(),
            "category": r.get("category"),
            "l2-category": r.get("l2-category"),
        })
    groups: dict[int, list[dict]] = {}
    for item in per_row:
        groups.setdefault(item["group"], []).append(item)
    group_ok = {}
    group_cat: dict[int, tuple] = {}
    for key, items in groups.items():
        group_ok[key] = all(it["correct"] for it in items)
        # The original question (smallest index) names the group's categories.
        first = min(items, key=lambda it: it["index"])
        group_cat[key] = (first["category"], first["l2-category"])

    def by(level: int) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for key, ok in group_ok.items():
            name = group_cat[key][level]
            if name is None:
                continue
            s = out.setdefault(name, {"groups": 0, "correct": 0})
            s["groups"] += 1
            s["correct"] += ok
        for s in out.values():
            s["accuracy"] = 100.0 * s["correct"] / s["groups"]
        return dict(sorted(out.items()))

    return {
        "rows": len(per_row),
        "rows_correct": sum(it["correct"] for it in per_row),
        "single_eval": 100.0 * sum(it["correct"] for it in per_row) / len(per_row),
        "groups": len(groups),
        "groups_correct": sum(group_ok.values()),
        "circular_eval": 100.0 * sum(group_ok.values()) / len(groups),
        "unparsed": sum(it["pred"] is None and not it["missing"] for it in per_row),
        "missing": sum(it["missing"] for it in per_row),
        "per_category": by(0),
        "per_l2_category": by(1),
    }


def eval_mmbench(annotation_file: str, result_file: str, upload_dir: str, experiment: str,
                 output_json: str | None = None) -> dict:
    header, rows = read_tsv(annotation_file)
    if not rows:
        raise EvalInputError(f"{annotation_file} has no questions.")
    index = load_predictions(result_file, rows, annotation_file)
    predictions = {k[0]: ans["text"] for k, ans in index.items()}
    missing = len(index.missing((int(r["index"]), 0) for r in rows))

    xlsx = os.path.join(upload_dir, f"{experiment}.xlsx")
    columns = write_submission(header, rows, predictions, xlsx)
    summary = {
        "benchmark": "mmbench",
        "annotation_file": os.path.abspath(annotation_file),
        "result_file": os.path.abspath(result_file),
        "submission": os.path.abspath(xlsx),
        "submission_columns": columns,
        "questions": len(rows),
        "missing": missing,
        "ignored": index.ignored,
    }
    if "answer" in header:
        summary.update(circular_score(rows, predictions))
    write_json(output_json or default_summary_path(result_file), summary)
    return summary


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--annotation-file", required=True, help="MMBench(-CN) TSV")
    parser.add_argument("--result-file", required=True, help="LLaVA answers jsonl (model_vqa_mmbench)")
    parser.add_argument("--upload-dir", required=True, help="where <experiment>.xlsx is written")
    parser.add_argument("--experiment", required=True, help="name of the submission file")
    parser.add_argument(
        "--output-json", default=None, help="summary JSON (default: <result-file stem>_scores.json)"
    )
    args = parser.parse_args(argv)
    s = eval_mmbench(args.annotation_file, args.result_file, args.upload_dir, args.experiment,
                     args.output_json)
    print(f"Submission: {s['submission']}")
    if "circular_eval" in s:
        print(f"CircularEval: {s['circular_eval']:.2f}")
        print(f"SingleEval: {s['single_eval']:.2f}")
    else:
        print("No 'answer' column in the TSV: submit the xlsx to the OpenCompass server for scores.")
    return s


if __name__ == "__main__":
    run_cli(main)
