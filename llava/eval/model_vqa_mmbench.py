"""Answer MMBench / MMBench-CN (TSV with base64 images), as LLaVA's `llava.eval.model_vqa_mmbench`.

    python -m llava.eval.model_vqa_mmbench --model-path liuhaotian/llava-v1.5-7b \
        --question-file ./playground/data/eval/mmbench/mmbench_dev_20230712.tsv \
        --answers-file ./playground/data/eval/mmbench/answers/mmbench_dev_20230712/llava-v1.5-7b.jsonl \
        --single-pred-prompt --temperature 0 --conv-mode vicuna_v1 [--lang cn] [--all-rounds]

Per row: the question is `[hint + "\\n"] + question` followed by "\\n<letter>. <option>" for each option
A-D up to the first missing one (empty, NaN, "nan", "none"; pandas' missing-value strings count as
missing, as LLaVA reads the TSV with pandas). That is the answer's `prompt`. `--single-pred-prompt` adds
"\\nAnswer with the option's letter from the given choices directly." (`--lang cn`: "\\n请直接回答选项字母。")
to what the model is asked. `--all-rounds` asks each row once per option, rotating the option texts under
fixed letters, and writes `round_id` 0, 1, ...; without it every row is round 0. Answer lines carry
`round_id`, `options` and `option_char` (the options and original letters in the order shown).
`--max_new_tokens` defaults to 1024 (LLaVA's fixed value). `--image-folder` is accepted and unused.
"""

from __future__ import annotations

import base64
import binascii
import io
import os

from llava.eval import EvalInputError
from llava.eval.driver import build_parser, run
from llava.eval.eval_mmbench import OPTION_LETTERS, PANDAS_NA, read_tsv
from llava.eval.questions import Benchmark, Item
from llava.utils import run_cli

SINGLE_PRED_PROMPT = {
    "en": "Answer with the option's letter from the given choices directly.",
    "cn": "请直接回答选项字母。",
}


def is_none(value: str | None) -> bool:
    """LLaVA's is_none on a pandas-read cell: NaN (pandas' missing-value strings) or 'nan' / 'none'."""
    return value is None or value in PANDAS_NA or value.lower() in ("nan", "none")


def get_options(row: dict) -> list[str]:
    options = []
    for letter in OPTION_LETTERS:
        value = row.get(letter)
        if is_none(value):
            break
        options.append(value)
    return options


def load_rows(args) -> list[tuple[dict, str]]:
    path = os.path.expanduser(args.question_file)
    header, rows = read_tsv(path)
    missing = [c for c in ("index", "question", "image") if c not in header]
    if missing:
        raise EvalInputError(f"{path}: no {', '.join(missing)} column(s); this is not an MMBench TSV.")
    return [(row, f"{path}: row index {row['index']}") for row in rows]


def decode_base64_image(b64: str, source: str):
    from PIL import Image, UnidentifiedImageError

    try:
        data = base64.b64decode(b64, validate=False)
        with Image.open(io.BytesIO(data)) as img:
            # RGB before padding: what LLaVA's CLIP processor (transformers 4.37) did after it; see open_rgb.
            return img.convert("RGB")
    except (binascii.Error, UnidentifiedImageError, OSError, ValueError) as err:
        raise EvalInputError(f"{source}: the image column is not a base64 image ({err}).") from None


def build_question(row: dict, options: list[str]) -> str:
    """LLaVA's MMBench question: [hint + "\n"] + question, then "\nA. option" for each option in order."""
    question = row["question"]
    if not is_none(row.get("hint")):
        question = row["hint"] + "\n" + question
    letters = OPTION_LETTERS[:len(options)]
    return question + "".join(f"\n{letter}. {option}" for letter, option in zip(letters, options, strict=True))


def expand(row, args) -> list[Item]:
    row, source = row
    options = get_options(row)
    option_char = list(OPTION_LETTERS[:len(options)])
    rounds = len(options) if args.all_rounds else 1
    suffix = "\n" + SINGLE_PRED_PROMPT[args.lang] if args.single_pred_prompt else ""
    b64 = row["image"]
    items = []
    for round_id in range(rounds):
        question = build_question(row, options)
        items.append(Item(question_id=int(row["index"]), prompt=question, question=question + suffix,
                          load_image=lambda: decode_base64_image(b64, source), source=source,
                          extra={"round_id": round_id, "options": list(options), "option_char": list(option_char)}))
        # The next round shows the option texts shifted by one under the same letters A, B, ...
        options = options[1:] + options[:1]
        option_char = option_char[1:] + option_char[:1]
    return items


def make_record(item: Item, text: str, answer_id: str, model_id: str) -> dict:
    return {"question_id": item.question_id, "round_id": item.extra["round_id"], "prompt": item.prompt,
            "text": text, "options": item.extra["options"], "option_char": item.extra["option_char"],
            "answer_id": answer_id, "model_id": model_id, "metadata": {}}


def answer_key(record) -> tuple:
    return (str(record["question_id"]), int(record.get("round_id", 0) or 0))


BENCHMARK = Benchmark(
    name="model_vqa_mmbench", load_rows=load_rows, expand=expand, answer_key=answer_key, make_record=make_record,
    options=lambda args: {"single_pred_prompt": args.single_pred_prompt, "lang": args.lang,
                          "all_rounds": args.all_rounds},
)


def main(argv=None, loaded=None, env=None) -> str:
    ap = build_parser(__doc__.split("\n\n")[0], max_new_tokens=1024)
    ap.add_argument("--single-pred-prompt", action="store_true", help="ask for the option letter only")
    ap.add_argument("--all-rounds", action="store_true", help="one round per option, rotating the options")
    ap.add_argument("--lang", type=str, default="en", choices=sorted(SINGLE_PRED_PROMPT))
    args = ap.parse_args(argv)
    return run(BENCHMARK, args, loaded, env)


if __name__ == "__main__":
    run_cli(main)
