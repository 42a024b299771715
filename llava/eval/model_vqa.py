"""Answer a LLaVA question jsonl with free-form answers (MM-Vet), as LLaVA's `llava.eval.model_vqa`.

    python -m llava.eval.model_vqa --model-path liuhaotian/llava-v1.5-7b \
        --question-file ./playground/data/eval/mm-vet/llava-mm-vet.jsonl \
        --image-folder ./playground/data/eval/mm-vet/images \
        --answers-file ./playground/data/eval/mm-vet/answers/llava-v1.5-7b.jsonl \
        --temperature 0 --conv-mode vicuna_v1

The question text is used as it is (MM-Vet has no suffix); answers may be long, so `--max_new_tokens`
defaults to 1024, LLaVA's fixed value in this driver. Chunking, torchrun, resume and the sidecar: see
`llava.eval.driver`.
"""

from __future__ import annotations

from llava.eval.driver import build_parser, run
from llava.eval.questions import jsonl_benchmark
from llava.utils import run_cli

BENCHMARK = jsonl_benchmark("model_vqa")


def main(argv=None, loaded=None, env=None) -> str:
    args = build_parser(__doc__.split("\n\n")[0], max_new_tokens=1024).parse_args(argv)
    return run(BENCHMARK, args, loaded, env)


if __name__ == "__main__":
    run_cli(main)
