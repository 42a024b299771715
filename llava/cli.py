"""The ``entropyprune`` command line.

Each subcommand is two functions, one that adds its arguments to its sub-parser and one that runs it,
registered in ``COMMANDS``; ``ecl`` and ``report`` keep theirs next to their code (llava.tools.ecl,
entropyprune.report).

    entropyprune flops --model llava-1.5-7b --layer 2 --avg-tokens 192 --text-tokens 62 [--vision]
    entropyprune flops --model llava-next-7b --image-size 1024x768 --layer 2 --keep 320 --text-tokens 62
    entropyprune ecl --model-path CKPT --question-file Q.jsonl --image-folder DIR --samples 64 --out DIR
    entropyprune report results [--out DIR] [--table layers|comparison|all]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass

from entropyprune import flops as F
from entropyprune import report as R
from llava.tools import ecl as E
from llava.utils import call_cli

MIB = 2**20


@dataclass(frozen=True)
class Command:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, argparse.ArgumentParser], int]


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be >= 0")
    return value


def _number(text: str) -> float | int:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


# ----------------------------------------------------------------------------------------------- flops

# How this command spells the budget parameters, for entropyprune.budget's error messages.
_BUDGET_FLAGS = {"keep": "--keep", "avg_tokens": "--avg-tokens", "ratio": "--ratio", "layer": "--layer"}


def _flops_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        default="llava-1.5-7b",
        help=f"a preset ({', '.join(F.PRESETS)}) or a config.json (LLaVA or HF LLaVA format) or its folder "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--layer",
        type=_non_negative_int,
        default=2,
        help="K: layers 0..K-1 see every token, layers K.. the kept ones; 0 = before the LM (default: 2)",
    )
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--keep", type=int, metavar="N", help="visual tokens kept per image after layer K")
    budget.add_argument(
        "--avg-tokens",
        type=_number,
        metavar="T",
        help="average visual tokens over all layers (the papers' budget): N = floor((L*T - K*V) / (L-K))",
    )
    budget.add_argument("--ratio", type=float, metavar="R", help="kept fraction: N = round(R*V)")
    p.add_argument(
        "--text-tokens",
        type=_non_negative_int,
        required=True,
        metavar="N_TEXT",
        help="non-visual prompt tokens (system + question), e.g. 62 for an MME prompt",
    )
    visual = p.add_mutually_exclusive_group()
    visual.add_argument("--visual-tokens", type=_non_negative_int, default=None, metavar="V",
                        help="per image (default: 576, one LLaVA-1.5 view)")
    visual.add_argument("--image-size", default=None, metavar="WxH",
                        help="an anyres (LLaVA-1.6) model: V is what an image of this width x height takes "
                             "(base view + unpadded crop grid + newlines), e.g. 1024x768")
    p.add_argument("--images", type=_non_negative_int, default=1, help="images in the prompt (default: 1)")
    p.add_argument("--decode-steps", type=_non_negative_int, default=0, help="generated tokens (default: 0)")
    p.add_argument(
        "--attention",
        choices=("full", "causal"),
        default="full",
        help="attention matmuls over all n x n pairs as the paper's 4 n^2 d (full), or causal pairs only",
    )
    p.add_argument("--lm-head", action="store_true", help="count the LM head (all prefill positions + steps)")
    p.add_argument(
        "--vision",
        action="store_true",
        help="count the CLIP ViT-L/14-336 tower and the mlp2x_gelu projector (the release's calflops scope)",
    )
    p.add_argument(
        "--measured",
        action="store_true",
        help="also run the real model (full size, meta device) under torch's FlopCounterMode and print the "
        "measured count next to the analytic one (full attention, as the meta-device SDPA computes it)",
    )
    p.add_argument("--method", default=None,
                   help="a multi-stage method (pdrop, sparsevlm): count its schedule for the budget exactly, "
                        "stage by stage (single-stage methods need no --method)")
    p.add_argument("--prune-option", action="append", default=None, metavar="NAME=VALUE",
                   help="an option of --method (repeatable), e.g. layer_list=2,8,16")
    p.add_argument("--json", action="store_true", help="print one JSON object and nothing else")


def _layer_groups(tokens: list[int]) -> list[tuple[int, int, int]]:
    groups: list[tuple[int, int, int]] = []
    for idx, n in enumerate(tokens):
        if groups and groups[-1][2] == n:
            groups[-1] = (groups[-1][0], idx, n)
        else:
            groups.append((idx, idx, n))
    return groups


def _schedule(args: argparse.Namespace, shape: F.LMShape) -> list | None:
    """The stages of a multi-stage --method for this budget, or None (one stage at --layer)."""
    if args.method is None:
        if args.prune_option:
            raise ValueError("--prune-option needs --method")
        return None
    from entropyprune.config import PruneConfig
    from entropyprune.options import parse_option_args

    cfg = PruneConfig(method=args.method, layer=args.layer, keep=args.keep, avg_tokens=args.avg_tokens,
                      ratio=args.ratio, options=parse_option_args(args.prune_option))
    return cfg.schedule(shape.num_layers, args.visual_tokens)


def _flops_report(args: argparse.Namespace, shape: F.LMShape, keep: int, stages: list | None = None) -> dict:
    L, K, V = shape.num_layers, args.layer, args.visual_tokens
    per_layer = None
    if stages is not None:
        per_layer = F.stage_tokens(stages, L, V)
        K, keep = stages[0].layer, per_layer[-1]
    res = F.prefill_flops(
        shape,
        n_text=args.text_tokens,
        n_visual=V,
        n_images=args.images,
        layer=K,
        keep=keep,
        decode_steps=args.decode_steps,
        include_lm_head=args.lm_head,
        attention=args.attention,
        vision="clip-vit-l-14-336" if args.vision else None,
        visual_per_layer=per_layer,
        views_per_image=1 if getattr(args, "anyres", None) is None else args.anyres.views,
    )
    removed = 1 - keep / V if V else 0.0
    n_vis = args.images * V
    eq16 = F.eq16_reduction(shape, n_vis, args.images * keep, K) if n_vis else 0.0
    kv_tokens = [row["kv_tokens"] for row in res["per_layer"]]
    kv_full = [args.text_tokens + args.images * V + args.decode_steps] * L
    vis_tokens = [args.images * (per_layer[i] if per_layer else (V if i < K else keep)) for i in range(L)]
    budget = next(name for name in ("keep", "avg_tokens", "ratio") if getattr(args, name) is not None)
    anyres = getattr(args, "anyres", None)
    return {
        "model": args.model,
        "method": args.method,
        "stages": None if stages is None else [asdict(st) for st in stages],
        "shape": asdict(shape),
        "layer": K,
        "budget": {"kind": budget, "value": getattr(args, budget)},
        "keep": keep,
        "avg_visual_tokens": res["avg_visual_tokens"],
        "text_tokens": args.text_tokens,
        "visual_tokens": V,
        "image_size": args.image_size,
        "anyres": None if anyres is None else {**asdict(anyres), "views": anyres.views},
        "images": args.images,
        "decode_steps": args.decode_steps,
        "attention": args.attention,
        "lm_head": args.lm_head,
        "vision": args.vision,
        "flops": {k: res[k] for k in ("prefill", "decode", "lm_head", "vision", "total")},
        "unpruned": res["baseline"],
        "terms": res["terms"],
        "tokens_per_layer": res["tokens_per_layer"],
        "fraction": res["fraction"],
        "flops_percent": round(100 * res["fraction"], 1),
        "reduction": {
            "simplified": F.simplified_ratio(L, K, removed),
            "eq16": eq16,
            "counted": 1 - res["fraction"],
        },
        "kv_cache_bytes": {
            "all": F.kv_cache_bytes(shape, kv_tokens),
            "all_unpruned": F.kv_cache_bytes(shape, kv_full),
            "visual": F.kv_cache_bytes(shape, vis_tokens),
            "visual_unpruned": F.kv_cache_bytes(shape, [args.images * V] * L),
        },
    }


def _print_flops_table(rep: dict, shape: F.LMShape) -> None:
    s, K, V = shape, rep["layer"], rep["visual_tokens"]
    tf = 1e12
    budget = rep["budget"]
    flag = _BUDGET_FLAGS[budget["kind"]]
    print(
        f"model      {rep['model']}: {s.num_layers} layers, d={s.hidden_size}, m={s.intermediate_size}, "
        f"{s.num_heads} heads ({s.num_kv_heads} kv) x {s.head_dim}, vocab {s.vocab_size}"
    )
    if rep.get("stages"):
        plan = ", ".join(f"{st['keep'] + st['merged']} from layer {st['layer']}" for st in rep["stages"])
        print(f"budget     {rep['method']} {flag} {budget['value']} -> {plan} of {V} visual tokens per image "
              f"(average {rep['avg_visual_tokens']:.1f} over {s.num_layers} layers)")
    else:
        print(
            f"budget     {flag} {budget['value']} -> keep {rep['keep']} of {V} visual tokens per image after "
            f"layer {K} (average {rep['avg_visual_tokens']:.1f} over {s.num_layers} layers)"
        )
    a = rep.get("anyres")
    if a:
        canvas, crops = "x".join(map(str, a["canvas"])), "x".join(map(str, a["crops"]))
        grid = "x".join(map(str, a["grid"]))
        print(f"image      {rep['image_size']}: canvas {canvas}, {crops} crops (rows x cols); V = {a['base']} base + "
              f"{grid} grid + {a['newlines']} newlines = {rep['visual_tokens']} ({a['views']} views through the tower)")
    parts = []
    for first, last, n in _layer_groups(rep["tokens_per_layer"]):
        span = f"layer {first}" if first == last else f"layers {first}-{last}"
        vis = n - rep["text_tokens"]
        parts.append(f"{span}: {n} ({rep['text_tokens']} text + {vis} visual)")
    print("tokens     " + "; ".join(parts))
    print(
        f"counted    decoder layers ({rep['attention']} attention), {rep['decode_steps']} decode steps, "
        f"LM head {'yes' if rep['lm_head'] else 'no'}, vision tower {'yes' if rep['vision'] else 'no'}"
    )
    print()
    print(f"{'part':<26}{'pruned TFLOPs':>15}{'unpruned TFLOPs':>17}")
    rows = [
        ("prefill (decoder layers)", "prefill", True),
        (f"decode ({rep['decode_steps']} steps)", "decode", True),
        ("LM head", "lm_head", rep["lm_head"]),
        ("vision tower + projector", "vision", rep["vision"]),
        ("total", "total", True),
    ]
    for label, key, counted in rows:
        if counted:
            print(f"{label:<26}{rep['flops'][key] / tf:>15.3f}{rep['unpruned'][key] / tf:>17.3f}")
        else:
            print(f"{label:<26}{'not counted':>15}")
    print()
    red = rep["reduction"]
    print(
        f"reduction  simplified (L-K)/L*r = {100 * red['simplified']:.1f}%   "
        f"Eq. 16 exact (visual tokens only) = {100 * red['eq16']:.1f}%   "
        f"this count = {100 * red['counted']:.1f}%"
    )
    kv = rep["kv_cache_bytes"]
    when = "after prefill" if not rep["decode_steps"] else f"after prefill + {rep['decode_steps']} steps"
    print(
        f"KV fp16    all tokens {when}: {kv['all'] / MIB:.1f} MiB of {kv['all_unpruned'] / MIB:.1f} MiB; "
        f"visual tokens only: {kv['visual'] / MIB:.1f} MiB of {kv['visual_unpruned'] / MIB:.1f} MiB"
    )
    print(f"FLOPs: {100 * rep['fraction']:.1f}%")


def cmd_flops(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        shape = F.resolve_shape(args.model)
    except (OSError, ValueError) as exc:
        parser.error(f"--model: {exc}")
    args.anyres = None
    if args.image_size is not None:
        from entropyprune.anyres_tokens import anyres_tokens, parse_image_size

        try:
            size = parse_image_size(args.image_size)
            points = F.anyres_pinpoints(args.model)
        except ValueError as exc:
            parser.error(f"--image-size: {exc}")
        if points is None:
            parser.error(f"--image-size needs an anyres (LLaVA-1.6) model, but --model {args.model} gives every "
                         "image one view: pass --visual-tokens V, or --model llava-next-7b")
        if args.measured:
            parser.error("--measured builds LLaVA-1.5's one-view model; drop --measured with --image-size")
        try:
            args.anyres = anyres_tokens(size, points)
        except ValueError as exc:
            parser.error(f"--image-size {args.image_size}: {exc}")
        args.visual_tokens = args.anyres.total
    elif args.visual_tokens is None:
        args.visual_tokens = 576
    try:
        keep = F.resolve_keep(
            shape.num_layers,
            args.layer,
            args.visual_tokens,
            keep=args.keep,
            avg_tokens=args.avg_tokens,
            ratio=args.ratio,
            flags=_BUDGET_FLAGS,
        )
    except F.BudgetError as exc:
        parser.error(str(exc))
    if args.text_tokens + args.images * args.visual_tokens == 0:
        parser.error("--text-tokens 0 with no visual tokens: the prompt is empty")
    stages = _schedule(args, shape)
    if stages is not None and args.measured:
        parser.error("--measured counts single-stage pruning only; drop --method or --measured")
    rep = _flops_report(args, shape, keep, stages)
    cmp = None
    if args.measured:
        from llava.tools import flops_measured as M

        cmp = M.compare(
            shape,
            n_text=args.text_tokens,
            n_visual=args.visual_tokens,
            n_images=args.images,
            layer=args.layer,
            keep=keep,
            decode_steps=args.decode_steps,
            include_lm_head=args.lm_head,
            vision="clip-vit-l-14-336" if args.vision else None,
        )
        rep["measured"] = {k: cmp[k] for k in ("rows", "max_rel_diff", "hook", "method_used", "fraction")}
    if args.json:
        print(json.dumps(rep, indent=2))
    else:
        _print_flops_table(rep, shape)
        if cmp is not None:
            print()
            print("measured   FlopCounterMode on the meta device; compared with the analytic count, full attention")
            print(M.format_comparison(cmp))
    return 0


# -------------------------------------------------------------------------------------------- registry

COMMANDS: dict[str, Command] = {
    "flops": Command(
        help="analytic FLOPs and KV cache of a pruned prefill (paper Eq. 15-16, Table 5)",
        add_arguments=_flops_arguments,
        run=cmd_flops,
    ),
    "ecl": Command(
        help="layer-wise matrix entropy of the visual tokens and the Entropy Collapse Layer (paper Fig. 2-3)",
        add_arguments=E.add_arguments,
        run=E.cmd_ecl,
    ),
    "report": Command(
        help="results/<benchmark>/*.json -> score-by-layer tables (paper Fig. 5) or, with --table comparison, "
             "methods by budget with Acc./Rel. (Table 1) and the radar chart (Fig. 1b)",
        add_arguments=R.add_arguments,
        run=R.main_report,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="entropyprune", description="EntropyPrune tools")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help, description=command.help)
        command.add_arguments(p)
        p.set_defaults(_run=command.run, _parser=p)
    return parser


def _main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args._run(args, args._parser)


def main(argv: list[str] | None = None) -> int:
    """The ``entropyprune`` console script: bad input is one ``error:`` line and exit status 2."""
    return call_cli(_main, argv, exit_on_interrupt=argv is None)  # in-process callers get the status back


if __name__ == "__main__":
    sys.exit(main())
