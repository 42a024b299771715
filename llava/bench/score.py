"""Time the token-entropy scorers side by side on one random input.

    python -m llava.bench.score [--tokens 576 --heads 32 --head-dim 128 --repeats 20
                                        --device cpu --json FILE]

Rows: the dual h x h form (paper variant, float32; the production path), the dual in float64, the
official variant (float64), the primal d_h x d_h reference in float64 (its default) and float32
(fewer repeats: it is the slow one), and the dual's eigen-solve alone, split over the CPU threads
(``score.batched_eigvalsh``) against one plain ``torch.linalg.eigvalsh`` call on the same Gram
matrices. Medians over repeats after a warm-up; ratios are against the dual row.
"""

from __future__ import annotations

import argparse
import json
import platform
from collections.abc import Callable

import torch

from entropyprune import score
from llava.bench.timing import median_seconds


def run(tokens: int, heads: int, head_dim: int, repeats: int, device: str) -> dict:
    dev = torch.device(device)
    x = torch.randn(tokens, heads, head_dim, generator=torch.Generator().manual_seed(0)).to(dev)
    primal_repeats = max(3, repeats // 4)
    u = x - x.mean(dim=-2, keepdim=True)
    u = u / torch.linalg.vector_norm(u, dim=-1, keepdim=True)
    gram = u @ u.transpose(-1, -2) / heads
    f64 = torch.float64
    cases: list[tuple[str, Callable[[], torch.Tensor], int]] = [
        ("dual (paper, float32)", lambda: score.token_entropy(x, heads), repeats),
        ("dual (paper, float64)", lambda: score.token_entropy(x, heads, dtype=f64), repeats),
        ("official (float64)", lambda: score.token_entropy(x, heads, "official"), repeats),
        ("primal (paper, float64)", lambda: score.token_entropy_primal(x, heads), primal_repeats),
        ("primal (paper, float32)", lambda: score.token_entropy_primal(x, heads, dtype=torch.float32),
         primal_repeats),
        ("  eig only, threaded", lambda: score.batched_eigvalsh(gram), repeats),
        ("  eig only, one call", lambda: torch.linalg.eigvalsh(gram), repeats),
    ]
    rows = []
    for name, fn, reps in cases:
        rows.append({"name": name, "median_ms": median_seconds(fn, reps, dev) * 1e3, "repeats": reps})
    base = rows[0]["median_ms"]
    for row in rows:
        row["ratio_vs_dual"] = row["median_ms"] / base
    dual = score.token_entropy(x, heads).double()
    primal = score.token_entropy_primal(x, heads)
    return {
        "shape": {"tokens": tokens, "heads": heads, "head_dim": head_dim},
        "device": str(dev),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "max_abs_dual_minus_primal": float((dual - primal).abs().max()),
        "rows": rows,
    }


def _table(result: dict) -> str:
    shape = result["shape"]
    lines = [
        f"token entropy, {shape['tokens']} tokens x {shape['heads']} heads x {shape['head_dim']} dims, "
        f"{result['device']}, {result['threads']} threads, torch {result['torch']}",
        f"{'scorer':<26}{'median ms':>11}{'vs dual':>10}{'repeats':>9}",
    ]
    for row in result["rows"]:
        lines.append(
            f"{row['name']:<26}{row['median_ms']:>11.2f}{row['ratio_vs_dual']:>9.1f}x{row['repeats']:>9}"
        )
    by_name = {row["name"]: row for row in result["rows"]}
    for dtype in ("float64", "float32"):
        lines.append(f"primal({dtype})/dual: {by_name[f'primal (paper, {dtype})']['ratio_vs_dual']:.1f}x")
    threaded = by_name["  eig only, threaded"]["median_ms"]
    one_call = by_name["  eig only, one call"]["median_ms"]
    lines.append(f"eigvalsh one call/threaded: {one_call / threaded:.2f}x")
    lines.append(f"max |dual - primal| score: {result['max_abs_dual_minus_primal']:.2e}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m llava.bench.score", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--tokens", type=int, default=576)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", metavar="FILE", help="also write the measurements here")
    args = parser.parse_args(argv)
    if min(args.tokens, args.heads, args.head_dim, args.repeats) < 1:
        parser.error("--tokens, --heads, --head-dim and --repeats must be >= 1")
    result = run(args.tokens, args.heads, args.head_dim, args.repeats, args.device)
    print(_table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    from llava.utils import run_cli

    run_cli(main)
