"""argparse types for the decoding flags: a bad value stops the run at parse time, naming the flag.

``temperature=nan`` or ``top_p=5`` would otherwise reach ``generate`` after the model has loaded (or, for
nan, answer every question with sampling that no resume can reproduce), so every flag is checked here.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def int_at_least(low: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
        if number < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {number}")
        return number

    return parse


def finite_float(low: float, high: float = math.inf, *, low_open: bool = False) -> Callable[[str], float]:
    """A finite float in [low, high] (``(low, high]`` with ``low_open``)."""
    span = f"{'(' if low_open else '['}{low:g}, {high:g}]" if high != math.inf else (
        f"{'>' if low_open else '>='} {low:g}")

    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
        if not math.isfinite(number) or number < low or (low_open and number == low) or number > high:
            raise argparse.ArgumentTypeError(f"expected a finite number {'in ' if high != math.inf else ''}{span}, "
                                             f"got {value!r}")
        return number

    return parse


def greedy_beams(value: str) -> int:
    """``--num_beams``: LLaVA's flag, kept for its command lines; only 1 (no beam search) is implemented."""
    number = int_at_least(1)(value)
    if number != 1:
        raise argparse.ArgumentTypeError(
            f"beam search is not supported (got {number}); LLaVA's benchmarks decode with --num_beams 1")
    return number


def add_decoding_args(ap: argparse.ArgumentParser, max_new_tokens: int) -> None:
    """LLaVA's decoding flags with their defaults (temperature 0.2: greedy only at 0, as in LLaVA)."""
    ap.add_argument("--temperature", type=finite_float(0.0), default=0.2,
                    help="0 = greedy (LLaVA's benchmark scripts pass 0); > 0 samples")
    ap.add_argument("--top_p", "--top-p", dest="top_p", type=finite_float(0.0, 1.0, low_open=True), default=None,
                    help="nucleus sampling mass in (0, 1] (with --temperature > 0)")
    ap.add_argument("--num_beams", "--num-beams", dest="num_beams", type=greedy_beams, default=1)
    ap.add_argument("--max_new_tokens", "--max-new-tokens", dest="max_new_tokens", type=int_at_least(1),
                    default=max_new_tokens)
