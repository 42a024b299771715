"""Answer ScienceQA (LLaVA's `llava_test_CQM-A.json`), as LLaVA's `llava.eval.model_vqa_science`.

    python -m llava.eval.model_vqa_science --model-path liuhaotian/llava-v1.5-7b \
        --question-file ./playground/data/eval/scienceqa/llava_test_CQM-A.json \
        --image-folder ./playground/data/eval/scienceqa/images/test \
        --answers-file ./playground/data/eval/scienceqa/answers/llava-v1.5-7b.jsonl \
        --single-pred-prompt --temperature 0 --conv-mode vicuna_v1

The question file is a JSON list of `{"id", "image"?, "conversations": [{"from": "human", "value"}, ...]}`.
The first human turn, with "<image>" removed and stripped, is the question. Items with an `image` are asked
with it and their answer's `prompt` starts with "<image>\\n" (the scorer's IMG subset is exactly those);
items without one are answered from the text alone. `--single-pred-prompt` appends "\\nAnswer with the
option's letter from the given choices directly." to both. `--max_new_tokens` defaults to 1024 (LLaVA's
fixed value).
"""

from __future__ import annotations

import os

from llava.eval import EvalInputError, load_json
from llava.eval.driver import build_parser, run
from llava.eval.questions import Benchmark, Item, open_rgb, prompt_key
from llava.utils import run_cli

SINGLE_PRED_PROMPT = "Answer with the option's letter from the given choices directly."


def load_rows(args) -> list[tuple[dict, str]]:
    path = os.path.expanduser(args.question_file)
    data = load_json(path, "question file", "See docs/Evaluation.md (ScienceQA): re-download llava_test_CQM-A.json.")
    if not isinstance(data, list):
        raise EvalInputError(f"{path}: expected a JSON list of questions, got {type(data).__name__}.")
    rows = []
    for i, line in enumerate(data):
        where = f"{path}: item {i}"
        if not isinstance(line, dict) or "id" not in line:
            raise EvalInputError(f"{where}: expected an object with 'id' and 'conversations'.")
        convs = line.get("conversations")
        if not (isinstance(convs, list) and convs and isinstance(convs[0], dict)
                and isinstance(convs[0].get("value"), str)):
            raise EvalInputError(f"{where} (id {line['id']}): 'conversations' must start with a turn that has a "
                                 "'value' string.")
        rows.append((line, f"{where} (id {line['id']})"))
    return rows


def expand(row, args) -> list[Item]:
    line, source = row
    qs = line["conversations"][0]["value"].replace("<image>", "").strip()
    prompt = qs
    load_image = path = None
    if "image" in line:
        if not isinstance(line["image"], str):
            raise EvalInputError(f"{source}: 'image' must be a relative path, got {line['image']!r}.")
        path = os.path.join(os.path.expanduser(args.image_folder), line["image"])
        load_image = lambda: open_rgb(path)  # noqa: E731 - bound per item
        prompt = "<image>\n" + prompt
    if args.single_pred_prompt:
        qs = qs + "\n" + SINGLE_PRED_PROMPT
        prompt = prompt + "\n" + SINGLE_PRED_PROMPT
    return [Item(question_id=line["id"], prompt=prompt, question=qs, load_image=load_image, image_path=path,
                 source=source)]


BENCHMARK = Benchmark(name="model_vqa_science", load_rows=load_rows, expand=expand, answer_key=prompt_key,
                      options=lambda args: {"single_pred_prompt": args.single_pred_prompt})


def main(argv=None, loaded=None, env=None) -> str:
    ap = build_parser(__doc__.split("\n\n")[0], max_new_tokens=1024)
    ap.add_argument("--single-pred-prompt", action="store_true",
                    help="ask for the option letter only (what LLaVA-1.5's sqa.sh passes)")
    args = ap.parse_args(argv)
    return run(BENCHMARK, args, loaded, env)


if __name__ == "__main__":
    run_cli(main)
