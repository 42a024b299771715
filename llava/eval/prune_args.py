"""The pruning flags shared by `run_llava` and every eval driver, turned into one PruneConfig."""

from __future__ import annotations

import argparse

from entropyprune.config import STATES, VARIANTS, PruneConfig
from entropyprune.options import parse_option_args


def _layer(value: str):
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--prune-layer takes an integer or 'auto', got {value!r}") from None


def add_prune_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("visual-token pruning (off unless --prune-method is given)")
    g.add_argument("--prune-method", default=None, help="e.g. entropy, random; omit for vanilla LLaVA")
    g.add_argument("--prune-layer", type=_layer, default=None,
                   help="layer K (0-based) where tokens are pruned; default 2, or 0 for vision-stage methods")
    budget = g.add_mutually_exclusive_group()
    budget.add_argument("--prune-keep", type=int, default=None, help="visual tokens kept per image after layer K")
    budget.add_argument("--prune-avg-tokens", type=float, default=None,
                        help="average visual tokens over all layers (the papers' 192/128/64 convention)")
    budget.add_argument("--prune-ratio", type=float, default=None, help="fraction of visual tokens kept")
    g.add_argument("--prune-states", default="query", choices=STATES)
    g.add_argument("--entropy-variant", default="official", choices=VARIANTS)
    g.add_argument("--prune-seed", type=int, default=0, help="seed of the random baseline")
    g.add_argument("--prune-option", action="append", default=None, metavar="NAME=VALUE",
                   help="a method option (repeatable), e.g. --prune-option pivot_image=4; see docs/Methods.md")
    g.add_argument("--prune-keep-newlines", action="store_true",
                   help="LLaVA-1.6: always keep the image_newline tokens; the budget applies to the other tokens")


def prune_config_from_args(args):
    """A PruneConfig from the parsed flags, or None when pruning is off."""
    if getattr(args, "prune_method", None) is None:
        given = [f for f in ("prune_keep", "prune_avg_tokens", "prune_ratio", "prune_option")
                 if getattr(args, f, None) is not None]
        if getattr(args, "prune_keep_newlines", False):
            given.append("prune_keep_newlines")
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise ValueError(f"{flag} needs --prune-method (e.g. --prune-method entropy)")
        return None
    avg = args.prune_avg_tokens
    if avg is not None and float(avg).is_integer():
        avg = int(avg)
    return PruneConfig(method=args.prune_method, layer=args.prune_layer, keep=args.prune_keep, avg_tokens=avg,
                       ratio=args.prune_ratio, states=args.prune_states, variant=args.entropy_variant,
                       seed=args.prune_seed, options=parse_option_args(getattr(args, "prune_option", None)),
                       keep_newlines=bool(getattr(args, "prune_keep_newlines", False)))
