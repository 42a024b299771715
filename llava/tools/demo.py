"""The embedded default job (``make demo``): what visual-token pruning costs, on a model that sees.

    python -m llava.tools.demo --model-path playground/demo/llava-v1.5-tiny-colour \
        --mme-dir playground/data/synthetic-colour/eval/MME/MME_Benchmark_release_version

With ``--mme-dir`` (a folder in MME's layout, e.g. the synthetic task's held-out set): one table, accuracy and
prefill time for the unpruned model and each method at each budget (``llava.tools.demo_table``), then one
example answer with and without pruning (the first question the unpruned model gets right and random at the
smallest budget gets wrong). ``--seed`` sets the pruning seed (random's draw). Without it: one question about
one drawn image, with and without EntropyPrune, which shows the whole path (tokenizer, CLIP tower, projector,
splice, pruning at layer K, cached decoding) running on any checkpoint, random-weight ones included.
"""

from __future__ import annotations

import argparse
import time

import torch
from PIL import Image, ImageDraw

from entropyprune.config import PruneConfig
from entropyprune.methods import get_spec
from llava.conversation import build_prompt
from llava.decoding import decode_answer
from llava.mm_utils import process_images, tokenizer_image_token
from llava.model.builder import load_pretrained_model

# The table's methods: vision-stage ones run before the language model (K = 0), the others (random included, the
# control for the in-LM methods) after layer --layer.
DEFAULT_METHODS = "random,entropy,fastv,dart,divprune"


def demo_image() -> Image.Image:
    img = Image.new("RGB", (480, 320), (235, 235, 230))
    draw = ImageDraw.Draw(img)
    draw.rectangle((40, 60, 200, 260), fill=(200, 30, 30))
    draw.ellipse((260, 80, 420, 240), fill=(30, 80, 200))
    return img


def one_question(model, tokenizer, processor, image, query: str, cfg: PruneConfig | None, max_new_tokens: int):
    """(answer, seconds, note on what was kept) for one question."""
    prompt = build_prompt(query, "vicuna_v1")
    ids = tokenizer_image_token(prompt, tokenizer, return_tensors="pt")[None].to(model.device)
    pixels = process_images([image], processor, model.config).to(model.device, model.dtype)
    model.set_prune(cfg)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids, images=pixels, image_sizes=[image.size], max_new_tokens=max_new_tokens)
    dt = time.perf_counter() - t0
    note = ""
    trace = model.get_model().prune_trace
    if cfg is not None and trace and trace[0]:
        rec = trace[0][0][-1]
        note = f" [kept {rec.kept.numel() + rec.merged} of {rec.length} visual tokens after layer {rec.layer}]"
    model.set_prune(None)
    return decode_answer(tokenizer, out[0]), dt, note


def table(args, tokenizer, model, processor) -> None:
    from llava.tools import demo_table

    questions = demo_table.load_questions(args.mme_dir)
    if args.limit:
        questions = questions[: args.limit]
    rows_in = demo_table.prepare(questions, tokenizer, processor, model.config)
    v = model.get_vision_tower().num_patches
    budgets = [int(b) for b in args.budgets.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    print(f"model: {args.model_path} ({model.config.num_hidden_layers} layers, {v} visual tokens per image) on "
          f"{model.device}; {len(questions)} questions from {args.mme_dir}", flush=True)
    configs: list[tuple[str, PruneConfig | None]] = [("vanilla", None)]
    for n in budgets:
        for m in methods:
            layer = 0 if get_spec(m).stage == "vision" else args.layer
            configs.append((f"{m}@{n} (K={layer})", PruneConfig(method=m, layer=layer, keep=n, seed=args.seed)))
    results = []
    for label, cfg in configs:
        t0 = time.perf_counter()
        results.append(demo_table.run_row(model, tokenizer, questions, rows_in, label, cfg, args.batch_size))
        print(f"  {label}: accuracy {results[-1].accuracy:.1f} % ({time.perf_counter() - t0:.1f} s)", flush=True)
    print()
    print(demo_table.format_table(results, v))
    print()
    # One example: the first question the unpruned model gets right and random at the smallest budget gets wrong.
    worst = next((r for r in results if r.label.startswith(f"random@{min(budgets)}")), results[-1])
    right = [[demo_table.parse_pred(a.strip()) == q.answer for a, q in zip(r.answers, questions, strict=True)]
             for r in (results[0], worst)]
    pick = next((i for i in range(len(questions)) if right[0][i] and not right[1][i]), 0)
    q = questions[pick]
    print(f"example: {q.image}\n  question: {q.text} (truth: {q.answer})")
    for r in (results[0], worst):
        print(f"  {r.label:>24}: {r.answers[pick]!r}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-path", default="checkpoints/llava-v1.5-tiny")
    ap.add_argument("--mme-dir", help="an MME-layout folder: print the accuracy / prefill table on it")
    ap.add_argument("--methods", default=DEFAULT_METHODS, help="comma-separated registry names (table rows)")
    ap.add_argument("--budgets", default="192,128,64", help="visual tokens kept per image (table rows)")
    ap.add_argument("--layer", type=int, default=1, help="K for the in-language-model methods of the table")
    ap.add_argument("--seed", type=int, default=0, help="the pruning seed (random's draw) of the table's rows")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--limit", type=int, default=0, help="only the first N questions (0: all)")
    ap.add_argument("--query", default="What shapes are in the image?")
    # 166 kept after layer 2 is what "average 192 tokens" means on LLaVA-1.5-7B (32 layers); the tiny
    # checkpoint has 4 layers, where that average would be unreachable, so the demo gives N directly.
    ap.add_argument("--keep", type=int, default=166, help="without --mme-dir: visual tokens kept after layer 2")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    args = ap.parse_args(argv)

    tokenizer, model, processor, _ = load_pretrained_model(args.model_path)
    if args.mme_dir:
        table(args, tokenizer, model, processor)
        return
    image = demo_image()
    print(f"model: {args.model_path} ({model.config.num_hidden_layers} layers) on {model.device}")
    print(f"question: {args.query}")
    for label, cfg in (("vanilla", None), ("entropyprune", PruneConfig(layer=2, keep=args.keep))):
        answer, dt, note = one_question(model, tokenizer, processor, image, args.query, cfg, args.max_new_tokens)
        print(f"{label:>13}: {answer!r} ({dt:.2f} s){note}")


if __name__ == "__main__":
    from llava.utils import run_cli

    run_cli(main)
