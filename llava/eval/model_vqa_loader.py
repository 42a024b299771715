"""Answer a LLaVA question jsonl (MME, TextVQA, GQA-style files), as LLaVA's `llava.eval.model_vqa_loader`.

    python -m llava.eval.model_vqa_loader --model-path liuhaotian/llava-v1.5-7b \
        --question-file ./playground/data/eval/MME/llava_mme.jsonl \
        --image-folder ./playground/data/eval/MME/MME_Benchmark_release_version \
        --answers-file ./playground/data/eval/MME/answers/llava-v1.5-7b.jsonl \
        --temperature 0 --conv-mode vicuna_v1 [--prune-method entropy --prune-avg-tokens 192]

Each line `{"question_id", "image", "text", ...}` is asked as it is ("<image>\\n" + text in the conversation
template; the short-answer suffix is already in the files); the answer line records the text as `prompt`.
`--max_new_tokens` defaults to 128 as in LLaVA. Chunking, torchrun, resume and the sidecar: see
`llava.eval.driver`.
"""

from __future__ import annotations

from llava.eval.driver import build_parser, run
from llava.eval.questions import jsonl_benchmark
from llava.utils import run_cli

BENCHMARK = jsonl_benchmark("model_vqa_loader")


def main(argv=None, loaded=None, env=None) -> str:
    args = build_parser(__doc__.split("\n\n")[0], max_new_tokens=128).parse_args(argv)
    return run(BENCHMARK, args, loaded, env)


if __name__ == "__main__":
    run_cli(main)
