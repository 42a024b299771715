"""Questions per second against batch size, with and without pruning: what `--batch-size` buys the drivers.

    python -m llava.bench.throughput --model-path CKPT [--questions Q.jsonl --image-folder DIR]
        [--num-questions 32] [--batch-sizes 1,2,4,8,16] [--methods none,entropy] [--json FILE]
    python -m llava.bench.throughput --arch llava-1.5-7b-cpu --layers 3 --num-questions 8 --batch-sizes 1,2,4,8

Every configuration (method x batch size) answers the same questions with the drivers' own code
(`llava.eval.batching.answer_stream`: collate, `model.generate`, cut at EOS), greedily, `--new-tokens` new
tokens at most. Prompts are tokenised and images preprocessed beforehand (the drivers do that in a
background thread while the model runs), so the time is the model's: vision tower, projector, prefill with
the pruning inside it, and the decode steps.

- ``qps``: questions per second, the median over ``--repeats`` rounds (after ``--warmup`` untimed ones).
  Within a round every configuration runs once and the order rotates from round to round, so drift (other
  processes, thermal) hits all alike.
- ``speedup``: questions per second over batch size 1 of the same method, the median of the per-round
  ratios (each ratio measured in one round, side by side).
- ``identical``: whether every question got exactly the tokens it got at batch size 1 (same method), in
  every round; ``differing`` counts the questions whose tokens differ (first round). In float32 on the CPU
  that is what the tests assert; in half precision batched kernels round differently (bfloat16 on the CPU
  does change some tokens), and these columns say how much.

Pruning: ``--methods`` names registered methods (``none``: vanilla) at ``--avg-tokens`` (default 192) after
``--layer`` (default 2), turned into N kept per image by the 32-layer rule (``--budget-layers``, default
32), so every model keeps what LLaVA-1.5-7B keeps (166 at 192).

Models: a checkpoint (``--model-path``; prompts from a LLaVA question file with ``--questions``, else random
text with a random image), or random weights (``--arch``, always with a vision tower: the tiny CLIP for
``tiny``, a random CLIP ViT-L/14-336 for the 7B widths). Random prompts have ``--text-tokens`` +/-
``--text-spread`` text tokens (uniform, seeded), so batches are padded as real ones are. With random
weights EOS is rare and most rows decode all ``--new-tokens``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time
from typing import Any

import torch

from entropyprune.budget import keep_for_budget
from entropyprune.config import PruneConfig
from entropyprune.methods import available_methods, method_stage
from llava.bench.timing import sync
from llava.bench.workload import ARCHS, device_and_dtype, question_prompts, random_model, random_prompts
from llava.eval.batching import Prepared, answer_stream
from llava.model.builder import load_pretrained_model
from llava.utils import run_cli

_DTYPES = ("float32", "bfloat16", "float16")


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{flag} {text!r}: expected a comma-separated list of integers") from None
    if not values or any(v < 1 for v in values):
        raise ValueError(f"{flag} {text!r}: expected integers >= 1")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llava.bench.throughput",
                                description="Questions per second against batch size, with and without pruning")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model-path", help="a LLaVA-1.5 checkpoint (folder or hub id)")
    src.add_argument("--arch", choices=ARCHS, help="random weights of this architecture, with a vision tower")
    p.add_argument("--layers", type=int, help="decoder layers of --arch")
    p.add_argument("--questions", help="a LLaVA question file (jsonl with 'text' and 'image'); needs --model-path")
    p.add_argument("--image-folder", help="images of --questions (a random image stands in for a missing one)")
    p.add_argument("--conv-mode", default="vicuna_v1")
    p.add_argument("--num-questions", type=int, default=32, help="questions answered per configuration (default 32)")
    p.add_argument("--text-tokens", type=int, default=62, help="random prompts: text tokens (default 62)")
    p.add_argument("--text-spread", type=int, default=20, help="random prompts: +/- this many (default 20)")
    p.add_argument("--batch-sizes", default="1,2,4,8,16", help="default 1,2,4,8,16 (1 is always run)")
    p.add_argument("--bucket-window", type=int, default=None, help="length bucketing as the drivers' flag")
    p.add_argument("--methods", default="none,entropy", help="'none' (vanilla) and registered methods")
    p.add_argument("--avg-tokens", type=float, default=192, help="average-token budget (default 192)")
    p.add_argument("--layer", type=int, default=2, help="pruning layer K (default 2)")
    p.add_argument("--budget-layers", type=int, default=32, help="L of the average-budget rule (default 32)")
    p.add_argument("--new-tokens", type=int, default=8, help="new tokens per question at most (default 8)")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--dtype", default="auto", choices=("auto", *_DTYPES),
                   help="auto: float32 for a checkpoint on the CPU, else float16 on CUDA and bfloat16 on the CPU")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0, help="random weights and prompts")
    p.add_argument("--json", metavar="FILE", help="write the machine, the settings and the rows as JSON")
    return p


def _prompts(args, model, tokenizer, image_processor, device, dtype) -> list[Prepared]:
    if args.questions:
        got = question_prompts(args.questions, args.num_questions, tokenizer, image_processor, model,
                               args.image_folder, args.conv_mode, device, dtype, args.seed)
    else:
        gen = torch.Generator().manual_seed(args.seed)
        low = max(1, args.text_tokens - args.text_spread)
        sizes = torch.randint(low, args.text_tokens + args.text_spread + 1, (args.num_questions,), generator=gen)
        got = [random_prompts(model, int(n), 1, device, dtype, args.seed + 1 + i)[0] for i, n in enumerate(sizes)]
    return [Prepared(p.input_ids[0], p.images) for p in got]


def _machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    if os.path.isfile("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as fh:
            m = re.search(r"model name\s*:\s*(.+)", fh.read())
        cpu = m.group(1).strip() if m else cpu
    return f"{cpu}, {os.cpu_count()} cores"


def format_table(rows: list[dict]) -> str:
    head = "| method | keep | batch | questions/s | s/question | speedup vs batch 1 | tokens as batch 1 |"
    lines = [head, "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        same = "identical" if r["identical"] else f"{r['differing']} of {r['questions']} differ"
        lines.append(f"| {r['method']} | {r['keep']} | {r['batch_size']} | {r['qps']:.2f} | {1 / r['qps']:.3f} | "
                     f"{r['speedup']:.2f}x | {same} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = build_parser().parse_args(argv)
    batch_sizes = sorted(set([1, *_int_list(args.batch_sizes, "--batch-sizes")]))
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if m != "none" and (m not in available_methods() or method_stage(m) != "llm"):
            raise ValueError(f"--methods: {m!r} is not a registered in-LLM method; choose none or one of "
                             f"{', '.join(available_methods())}")
    if args.repeats < 1 or args.warmup < 0 or args.num_questions < 1 or args.new_tokens < 1:
        raise ValueError("--repeats, --num-questions and --new-tokens must be >= 1, --warmup >= 0")
    if args.questions and not args.model_path:
        raise ValueError("--questions needs --model-path (random weights come without a tokenizer)")
    if args.questions and not os.path.isfile(args.questions):
        raise ValueError(f"--questions {args.questions}: no such file")
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = device_and_dtype(args.device, args.dtype,
                                     cpu_default=torch.float32 if args.model_path else torch.bfloat16)

    if args.model_path:
        tokenizer, model, image_processor, _ = load_pretrained_model(args.model_path, device=str(device),
                                                                     torch_dtype=dtype)
        arch = os.path.basename(os.path.normpath(args.model_path))
    else:
        model = random_model(args.arch, args.layers, True, device, dtype, args.seed)
        tokenizer = image_processor = None
        arch = args.arch
    num_visual = model.get_vision_tower().num_patches
    keep = keep_for_budget(args.budget_layers, args.layer, num_visual, avg_tokens=args.avg_tokens,
                           flags={"avg_tokens": "--avg-tokens", "layer": "--layer"})
    prompts = _prompts(args, model, tokenizer, image_processor, device, dtype)
    configs = [(m, b) for m in methods for b in batch_sizes]
    prune = {m: None if m == "none" else PruneConfig(method=m, layer=args.layer, keep=keep) for m in methods}
    for cfg in prune.values():
        model.set_prune(cfg)  # checks the budget against this model before any timing
    model.set_prune(None)

    times: dict[tuple, list[float]] = {c: [] for c in configs}
    outputs: dict[tuple, list] = {}
    identical = dict.fromkeys(configs, True)
    load_before = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    print(f"# {len(configs)} configurations x {len(prompts)} questions x ({args.warmup} warm-up + "
          f"{args.repeats} timed) rounds; keep {keep} of {num_visual} after layer {args.layer}", file=sys.stderr,
          flush=True)
    for rnd in range(args.warmup + args.repeats):
        shift = rnd % len(configs)
        t_round = time.perf_counter()
        for method, batch in configs[shift:] + configs[:shift]:
            model.set_prune(prune[method])
            sync(device)
            start = time.perf_counter()
            got = [ids.tolist() for _, ids in answer_stream(model, enumerate(prompts), batch, args.bucket_window,
                                                           max_new_tokens=args.new_tokens, use_cache=True)]
            sync(device)
            if rnd >= args.warmup:
                times[(method, batch)].append(time.perf_counter() - start)
            outputs.setdefault((method, batch), got)
            if got != outputs[(method, batch)]:
                identical[(method, batch)] = False
        for method, batch in configs:
            if outputs.get((method, batch)) != outputs.get((method, 1)):
                identical[(method, batch)] = False
        kind = "timed" if rnd >= args.warmup else "warm-up"
        print(f"# round {rnd + 1} ({kind}) {time.perf_counter() - t_round:.1f} s", file=sys.stderr, flush=True)
    model.set_prune(None)

    n = len(prompts)
    rows = []
    for method, batch in configs:
        per_round = [n / t for t in times[(method, batch)]]
        base = [n / t for t in times[(method, 1)]]
        rows.append({
            "method": method, "keep": keep if method != "none" else num_visual, "batch_size": batch,
            "bucket_window": args.bucket_window, "qps": statistics.median(per_round),
            "speedup": statistics.median(q / b for q, b in zip(per_round, base, strict=True)),
            "qps_rounds": per_round, "identical": identical[(method, batch)], "questions": n,
            "differing": sum(a != b for a, b in zip(outputs[(method, batch)], outputs[(method, 1)], strict=True)),
            "new_tokens_mean": statistics.fmean(len(ids) for ids in outputs[(method, batch)]),
        })
    meta = {
        "device": str(device), "machine": _machine(device), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "dtype": str(dtype).replace("torch.", ""), "arch": arch,
        "layers": model.config.num_hidden_layers, "questions": n,
        "prompt_source": args.questions or f"random text ({args.text_tokens} +/- {args.text_spread} tokens) + "
                                            "a random image",
        "text_tokens": [p.input_ids.numel() for p in prompts], "new_tokens": args.new_tokens,
        "layer": args.layer, "avg_tokens": args.avg_tokens, "budget_layers": args.budget_layers,
        "repeats": args.repeats, "warmup": args.warmup, "load_avg_before": load_before,
        "load_avg_after": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    print(f"# {meta['machine']}, torch {meta['torch']}, {meta['threads']} threads, {meta['dtype']}, {arch} "
          f"({meta['layers']} layers), {n} questions, <= {args.new_tokens} new tokens; medians of "
          f"{args.repeats} rounds; load average {load_before} -> {meta['load_avg_after']}")
    print(format_table(rows))
    if args.json:
        from entropyprune.files import atomic_file

        with atomic_file(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
        print(f"wrote {args.json}")
    return rows


if __name__ == "__main__":
    run_cli(main)
