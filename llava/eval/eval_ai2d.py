"""Score AI2D test (VLMEvalKit's AI2D_TEST.tsv) with VLMEvalKit's exact-matching rules; see `llava.eval.eval_mcq`.

    python -m llava.eval.eval_ai2d --annotation-file AI2D_TEST.tsv --result-file A.jsonl [--output-json O.json]

`overall` is the accuracy in percent; per `category` / `l2-category` beside it when the TSV has them.
"""

from __future__ import annotations

from llava.eval import run_cli
from llava.eval.eval_mcq import main_for


def main(argv: list[str] | None = None) -> dict:
    return main_for("ai2d", "AI2D", __doc__, argv)


if __name__ == "__main__":
    run_cli(main)
