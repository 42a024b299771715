"""Score MMStar (VLMEvalKit's MMStar.tsv) with VLMEvalKit's exact-matching rules; see `llava.eval.eval_mcq`.

    python -m llava.eval.eval_mmstar --annotation-file MMStar.tsv --result-file A.jsonl [--output-json O.json]

`overall` is the accuracy in percent over the 1500 questions; per `category` (the six core capabilities)
and `l2-category` (the 18 detailed axes) beside it.
"""

from __future__ import annotations

from llava.eval import run_cli
from llava.eval.eval_mcq import main_for


def main(argv: list[str] | None = None) -> dict:
    return main_for("mmstar", "MMStar", __doc__, argv)


if __name__ == "__main__":
    run_cli(main)
