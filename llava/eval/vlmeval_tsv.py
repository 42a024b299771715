"""VLMEvalKit's benchmark TSVs (MMStar, AI2D, OCRBench, MMMU), read as VLMEvalKit reads them.

One header row, tab-separated, one question per row: `index`, `question`, option columns `A`, `B`, ...,
`answer`, `category`, `l2-category`, `split`, `image`, ... (each benchmark has its own subset). The
driver (`model_vqa_tsv`) and the scorers share this reader, so both see the same rows and options.
Standard library only: scoring never needs torch or PIL.

VLMEvalKit reads the files with pandas; what that implies is kept here:
- a cell pandas reads as missing (its default NA strings: "", "nan", "None", "N/A", ...) is missing;
- options are the columns named by one upper-case letter whose cell is not missing, in letter order
  (VLMEvalKit's `build_choices`; unlike LLaVA's MMBench driver it does not stop at the first gap);
- the `image` cell is one base64 image, a Python list literal of base64 images (multi-image MMMU
  questions), or, when 64 characters or shorter, the `index` of another row whose image it shares;
- rows without an image are dropped (VLMEvalKit's `skip_noimg`), by the driver and the scorers alike.
"""

from __future__ import annotations

import ast
import string

from llava.eval import EvalInputError, read_jsonl
from llava.eval.answer_index import index_answers
from llava.eval.eval_mmbench import PANDAS_NA, read_tsv

OPTION_COLUMNS = tuple(string.ascii_uppercase)
# VLMEvalKit treats an image cell this short as a reference to another row's index.
_REFERENCE_MAX_LEN = 64


def is_na(value: str | None) -> bool:
    """pandas' notion of a missing cell, which is what VLMEvalKit's `pd.isna` checks see."""
    return value is None or value in PANDAS_NA


def choices(row: dict[str, str]) -> dict[str, str]:
    """Option letter -> text for every letter column present and not missing (VLMEvalKit's build_choices)."""
    return {letter: row[letter] for letter in OPTION_COLUMNS if letter in row and not is_na(row[letter])}


def cell(row: dict[str, str], *names: str) -> str | None:
    """The first of the named columns the row has with a value, else None (e.g. l2-category / l2_category)."""
    for name in names:
        value = row.get(name)
        if not is_na(value):
            return value
    return None


def l2_category(row: dict[str, str]) -> str | None:
    return cell(row, "l2-category", "l2_category")


def _image_list(value: str, source: str) -> list[str]:
    if len(value) > 1 and value[0] == "[" and value[-1] == "]":
        # VLMEvalKit eval()s this; a literal is all these files hold, so literal_eval is enough and safe.
        try:
            images = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise EvalInputError(f"{source}: the image cell starts with '[' but is not a list of base64 "
                                 "strings; re-download the TSV.") from None
        if not isinstance(images, list) or not images or not all(isinstance(x, str) for x in images):
            raise EvalInputError(f"{source}: the image cell is not a non-empty list of base64 strings.")
        return images
    return [value]


def read_questions(path: str, what: str, required: tuple[str, ...] = ("index", "question", "image")
                   ) -> tuple[list[str], list[dict]]:
    """(header, rows) of the rows that have an image, each row with `_images` (its base64 images, in order)
    and `_source` ("file: row index N", for messages) added. Index references are resolved."""
    header, rows = read_tsv(path, what)
    missing = [c for c in required if c not in header]
    if missing:
        raise EvalInputError(f"{path}: no {', '.join(missing)} column(s); this is not a valid {what}.")
    seen: set[str] = set()
    for row in rows:
        index = row["index"].strip()
        if index in seen:
            raise EvalInputError(f"{path}: index {index} appears twice; re-download the TSV.")
        seen.add(index)
    by_index = {row["index"].strip(): row["image"] for row in rows}
    kept = []
    for row in rows:
        source = f"{path}: row index {row['index'].strip()}"
        value = row["image"]
        if is_na(value):
            continue  # skip_noimg
        if len(value) <= _REFERENCE_MAX_LEN:
            target = by_index.get(value.strip())
            if target is None or is_na(target) or len(target) <= _REFERENCE_MAX_LEN:
                raise EvalInputError(f"{source}: the image cell {value!r} is neither an image nor the index of "
                                     "a row holding one; re-download the TSV.")
            value = target
        kept.append({**row, "_images": _image_list(value, source), "_source": source})
    if not kept:
        raise EvalInputError(f"{path} has no questions with an image.")
    return header, kept


def index_of(row: dict) -> int:
    return int(row["index"].strip())


def answers_by_index(result_file: str, what: str, rows: list[dict], tsv: str, benchmark: str) -> dict[int, str]:
    """index -> answer text from a model_vqa_tsv answers file, under `llava.eval.answer_index`'s rule: a
    repeated index or an index that is not a row (with an image) of the TSV is an error, an empty file is an
    error, and the questions without an answer are reported (they count as wrong)."""
    indices = {index_of(row) for row in rows}

    def key(ans: dict):
        try:
            return int(ans["question_id"])
        except (TypeError, ValueError):
            return f"not an index: {ans['question_id']!r}"  # never a row's index: reported as unknown

    index = index_answers(
        result_file, read_jsonl(result_file, what, required=("question_id", "text")), benchmark=benchmark,
        key=key, known=indices, driver="llava.eval.model_vqa_tsv",
        unknown=lambda k, ans: (f"question_id {ans['question_id']!r} is not an index of a question (with an "
                                f"image) in {tsv}"),
    )
    index.missing(index_of(row) for row in rows)
    return {k: ans["text"] if isinstance(ans["text"], str) else str(ans["text"]) for k, ans in index.items()}


def accuracy_by(items: list[dict], key: str) -> dict[str, dict]:
    """{group: {"questions", "correct", "accuracy" (%)}} over items with a non-None `key`, sorted by group."""
    groups: dict[str, dict] = {}
    for item in items:
        name = item.get(key)
        if name is None:
            continue
        g = groups.setdefault(name, {"questions": 0, "correct": 0})
        g["questions"] += 1
        g["correct"] += bool(item["correct"])
    for g in groups.values():
        g["accuracy"] = 100.0 * g["correct"] / g["questions"]
    return dict(sorted(groups.items()))
