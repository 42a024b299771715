"""Answer a VLMEvalKit benchmark TSV (MMStar, AI2D, MMMU, OCRBench; base64 images) with LLaVA.

    python -m llava.eval.model_vqa_tsv --model-path liuhaotian/llava-v1.5-7b \
        --question-file ./playground/data/eval/mmstar/MMStar.tsv \
        --answers-file ./playground/data/eval/mmstar/answers/llava-v1.5-7b.jsonl \
        --temperature 0 --conv-mode vicuna_v1 [--prompt-style mcq|plain]

The question is what VLMEvalKit asks LLaVA (its `LLaVA.build_prompt` for multiple-choice datasets, the
dataset's own prompt otherwise):
- `--prompt-style mcq` (MMStar, AI2D, MMMU): `[hint + "\\n"] + question`, then "\\n<letter>. <option>" for
  every option column present (`llava.eval.vlmeval_tsv`), then "\\nAnswer with the option's letter from
  the given choices directly."; a row without options (MMMU's open questions) ends with "\\nAnswer the
  question directly." instead. Text with Chinese characters gets VLMEvalKit's Chinese suffixes.
- `--prompt-style plain` (OCRBench): the question alone.
The answer's `prompt` is the question without the suffix. Every image of a row is shown, in order, each
under its own image marker line before the question (VLMEvalKit passes all of them to LLaVA; MMMU's
`<image 1>` references stay in the text). Rows without an image are skipped, as VLMEvalKit does.
Answer lines are LLaVA's, keyed by `question_id` = the TSV `index`. `--max_new_tokens` defaults to 1024
(LLaVA's MMBench value). `--image-folder` is accepted and unused.
"""

from __future__ import annotations

import os
import re

from llava.eval.driver import build_parser, run
from llava.eval.model_vqa_mmbench import decode_base64_image
from llava.eval.questions import Benchmark, Item
from llava.eval.vlmeval_tsv import choices, index_of, is_na, read_questions
from llava.utils import run_cli

# VLMEvalKit's LLaVA wrapper: (with options, without options), English and Chinese.
SUFFIX = {
    "en": ("Answer with the option's letter from the given choices directly.", "Answer the question directly."),
    "cn": ("请直接回答选项字母。", "请直接回答问题。"),
}
_CJK = re.compile("[\u4e00-\u9fff]")


def mcq_question(row: dict) -> tuple[str, str]:
    """(question with hint and options, suffix) as VLMEvalKit's LLaVA.build_prompt builds them."""
    question = row["question"]
    if not is_na(row.get("hint")):
        question = row["hint"] + "\n" + question
    options = choices(row)
    question += "".join(f"\n{letter}. {text}" for letter, text in options.items())
    with_options, without = SUFFIX["cn" if _CJK.search(question) else "en"]
    return question, with_options if options else without


def load_rows(args) -> list[dict]:
    path = os.path.expanduser(args.question_file)
    return read_questions(path, "benchmark TSV")[1]


def expand(row: dict, args) -> list[Item]:
    if args.prompt_style == "mcq":
        prompt, suffix = mcq_question(row)
        question = prompt + "\n" + suffix
    else:
        prompt = question = row["question"]
    b64s, source = row["_images"], row["_source"]
    if len(b64s) == 1:
        load = lambda: decode_base64_image(b64s[0], source)  # noqa: E731 - bound per row
    else:
        load = lambda: [decode_base64_image(b, source) for b in b64s]  # noqa: E731
    return [Item(question_id=index_of(row), prompt=prompt, question=question, load_image=load,
                 num_images=len(b64s), source=source)]


def answer_key(record) -> tuple:
    return (str(record["question_id"]),)


BENCHMARK = Benchmark(name="model_vqa_tsv", load_rows=load_rows, expand=expand, answer_key=answer_key,
                      options=lambda args: {"prompt_style": args.prompt_style})


def main(argv=None, loaded=None, env=None) -> str:
    ap = build_parser(__doc__.split("\n\n")[0], max_new_tokens=1024)
    ap.add_argument("--prompt-style", choices=("mcq", "plain"), default="mcq",
                    help="mcq: VLMEvalKit's LLaVA multiple-choice prompt; plain: the question alone (OCRBench)")
    args = ap.parse_args(argv)
    return run(BENCHMARK, args, loaded, env)


if __name__ == "__main__":
    run_cli(main)
