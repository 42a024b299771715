"""Measured efficiency of pruning, shaped like the paper's Table 5: vanilla LLaVA against each method.

    python -m llava.bench.efficiency --arch llava-1.5-7b-cpu [--layers 6] [--budgets 192,128,64]
        [--methods entropy,random] [--repeats 5] [--new-tokens 4] [--json FILE]
    python -m llava.bench.efficiency --arch llava-1.5-7b-cpu --image-size 672x672 --keeps 640,320,160
    python -m llava.bench.efficiency --model-path liuhaotian/llava-v1.5-7b \\
        [--questions playground/data/eval/MME/llava_mme.jsonl --num-questions 20 --image-folder DIR]

Per row (vanilla, then each method at each average budget):

- ``prefill_s``: from the prompt ids to the first generated token on the host: vision tower and projector
  (when the model has one), splice, building the pruning hook, the language model's prefill with the
  pruning inside it, the LM head on the last position and the greedy pick. This is what
  ``LlavaLlamaForCausalLM.generate`` runs before its first token, driven here step by step so that the
  KV cache can be read.
- ``latency_s``: the same plus ``--new-tokens - 1`` cached greedy decode steps, i.e. the end-to-end time of
  ``--new-tokens`` new tokens. EOS does not stop the loop, so every row decodes the same number of steps.
- ``kv_bytes``: ``KVCache.nbytes()`` right after the prefill, asserted equal to
  ``2 * sum(layer_lengths) * kv_heads * head_dim * bytes`` and the layer lengths asserted equal to the
  token counts the pruning contract gives (text + kept tokens from layer K on). ``kv_visual_bytes`` counts
  the visual tokens only, which is what the paper's KV column reports (288.0 MB for vanilla 7B).
- ``peak_mem_bytes``: on CUDA ``torch.cuda.max_memory_allocated`` over the run (weights included). On the
  CPU tracemalloc does not see torch's allocations, so it is the process's peak resident set during the
  run (``VmHWM`` of /proc/self/status, reset before each run by writing 5 to /proc/self/clear_refs after
  ``malloc_trim``); it includes the weights and the Python runtime. ``peak_mem_kind`` names which.
  ``peak_mem_delta_bytes`` is the peak's rise over what was held when the run started (activations, KV
  cache, temporaries): the part pruning can change.
- ``flops_fraction``: :func:`entropyprune.flops.prefill_flops` with the run's real token counts (text
  tokens and kept tokens read from the splice and the prune trace), the decoder layers plus the vision
  tower when one runs: the work that ``prefill_s`` times. ``flops_bound_speedup = 1 / flops_fraction`` and
  ``speedup_vs_bound = (vanilla prefill / this prefill) / flops_bound_speedup``.
- ``flops_vision_fraction`` + ``flops_method_fraction`` + ``flops_lm_fraction`` = ``flops_fraction``: the
  vision tower and projector (every patch, as vanilla), the method's own work (its calls in one prefill,
  counted by torch's ``FlopCounterMode``: matrix products and attention; for CDPruner including CLIP's text
  tower) and the language model's prefill, each over vanilla's total.
- ``select_s``: the pruning method's own call (for EntropyPrune: token entropy + top-N) on the states it
  was given inside the prefill, timed again on its own, same device, after the runs; ``score_s`` is the
  scorer alone (``token_entropy`` for EntropyPrune); ``select_share`` = ``select_s / prefill_s``.
  ``select_inline_s`` is the same call timed inside the prefill (CPU only: on CUDA it would need a sync).

Medians over ``--repeats`` after ``--warmup`` untimed rounds. Within a round every row runs once on every
prompt, and the order of the rows rotates from round to round, so slow drift (thermal, other processes)
hits all rows alike.

Models: a checkpoint (``--model-path``, with its tokenizer and CLIP tower; prompts from ``--questions``
in LLaVA's MME jsonl format or random text), or random weights of a named architecture (``--arch``):
``llava-1.5-7b`` (full size; needs ~14 GB in half precision), ``llava-1.5-7b-cpu`` (7B's widths, hidden
4096, FFN 11008, 32 heads of 128, with ``--layers`` decoder layers, default 6, so it runs in minutes on a
laptop CPU) and ``tiny`` (the test checkpoint's shapes). Without a vision tower the prompt gets random
"projected image features" at the image span; ``--with-vision`` adds a randomly initialised CLIP ViT-L/14
-336 tower and mlp2x_gelu projector (the tiny CLIP for ``tiny``), so the vision stage is timed too.

Budgets are the papers' average-token budgets over ``--budget-layers`` layers (default: the model's own
depth for a checkpoint, 32 for the ``--arch`` models), turned into a per-image keep count with the one
exact rule of :mod:`entropyprune.budget`. So ``llava-1.5-7b-cpu`` keeps 166 / 98 / 29 tokens after layer 2
for 192 / 128 / 64, exactly what the 32-layer model keeps; its FLOPs fraction is that of its own, shallower
stack.

LLaVA-1.6 (LLaVA-NeXT): a checkpoint is refused (one 576-token view per image here), but ``--arch`` without
``--with-vision`` takes ``--image-size WxH``: the image span then holds LLaVA-1.6's visual-token count for an
image of that shape on llava-v1.6's grid pinpoints (:mod:`entropyprune.anyres_tokens`; 672x672 gives 2928),
the language model's prefill being the same computation as LLaVA-NeXT-7B's for one such image (its LM is
Vicuna-7B, the widths of ``llava-1.5-7b``). ``--keeps 640,320,160`` sets the rows by kept count after layer K
(LLaVA-1.6's convention) instead of average budgets.

This module is the command line; the workload (model, prompts) is in ``workload.py``, one measured run in
``measure.py``, the rows and the table in ``table5.py``.
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
from collections.abc import Callable
from typing import Any

import torch

from entropyprune.budget import BudgetError, keep_for_budget
from entropyprune.config import STATES, VARIANTS
from entropyprune.methods import available_methods, get_spec, method_stage
from entropyprune.options import parse_option_args
from llava.bench.measure import Memory, check_cache, profile_breakdown, run_once
from llava.bench.table5 import build_rows, format_table, summarise
from llava.bench.workload import (
    ARCHS,
    DEFAULT_CPU_LAYERS,
    attach_random_clip_text,
    device_and_dtype,
    question_prompts,
    random_model,
    random_prompts,
    vision_shape,
)
from llava.model.builder import load_pretrained_model
from llava.model.language_model.modeling_llama import ATTN_IMPLEMENTATIONS

REQUIRED_KEYS = (
    "method", "avg_tokens", "keep", "flops_fraction", "prefill_s", "latency_s", "kv_bytes", "peak_mem_bytes",
    "device", "dtype", "arch",
)
# How this command spells the budget parameters, for entropyprune.budget's error messages.
_BUDGET_FLAGS = {"avg_tokens": "--budgets", "layer": "--layer"}
_DTYPES = ("float32", "bfloat16", "float16")


# -------------------------------------------------------------------------------------------------- driver


def _parse_list(text: str, kind: Callable[[str], Any], flag: str) -> list:
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{flag} {text!r}: expected a comma-separated list") from None


def _parse_scores(items: list[str]) -> dict[str, float]:
    scores = {}
    for item in items:
        label, sep, value = item.partition("=")
        try:
            scores[label.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise ValueError(f"--score {item!r}: expected LABEL=VALUE, e.g. vanilla=1862 or entropy@128=1780")
    return scores


def _parse_method_options(items: list[str], methods: list[str]) -> dict[str, dict[str, str]]:
    out: dict[str, list[str]] = {}
    for item in items:
        method, sep, rest = item.partition(":")
        if not sep or method not in methods:
            raise ValueError(f"--method-option {item!r}: expected METHOD:NAME=VALUE with METHOD one of --methods "
                             f"({', '.join(methods)})")
        out.setdefault(method, []).append(rest)
    return {m: parse_option_args(v) for m, v in out.items()}


def refuse_anyres(model_path: str, tool: str, config=None) -> None:
    """One line for a LLaVA-1.6 (anyres) checkpoint: these benchmarks time one 576-token view per image
    (prompts, budgets and the cache check assume it); read from its config.json before any weights load."""
    if config is None:
        path = os.path.join(os.path.expanduser(model_path), "config.json")
        if not os.path.isfile(path):
            return  # a hub id: checked on the loaded model's config
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    get = config.get if isinstance(config, dict) else (lambda k, c=config: getattr(c, k, None))
    if get("model_type") == "llava_next" or get("image_aspect_ratio") == "anyres":
        raise ValueError(f"{tool} {model_path}: a LLaVA-1.6 (anyres) checkpoint, whose images have V per shape; "
                         "this benchmark times one 576-token view of a checkpoint's image: use `python -m "
                         "llava.bench.efficiency --arch llava-1.5-7b-cpu --image-size WxH --keeps 640,320,160` for "
                         "LLaVA-NeXT-7B's prefill at an image shape, `entropyprune flops --model llava-next-7b "
                         "--image-size WxH` for its FLOPs and KV")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llava.bench.efficiency",
                                description="Measured prefill, latency, KV cache, memory and FLOPs of pruning "
                                            "(paper Table 5)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model-path", help="a LLaVA-1.5 checkpoint (folder or hub id)")
    src.add_argument("--arch", choices=ARCHS, help="random weights of this architecture (default: llava-1.5-7b-cpu "
                     "on the CPU, llava-1.5-7b on CUDA)")
    p.add_argument("--layers", type=int, help=f"decoder layers of --arch (llava-1.5-7b-cpu: {DEFAULT_CPU_LAYERS})")
    p.add_argument("--with-vision", action="store_true", help="--arch: add a random CLIP tower and projector")
    p.add_argument("--methods", default="entropy", help="comma-separated registered methods (default: entropy)")
    p.add_argument("--budgets", default="192,128,64", help="average visual-token budgets (default: 192,128,64)")
    p.add_argument("--keeps", help="kept visual tokens N after layer K instead of --budgets, e.g. 640,320,160 "
                   "(LLaVA-1.6's convention)")
    p.add_argument("--image-size", metavar="WxH",
                   help="--arch without --with-vision: the image span has LLaVA-1.6's visual-token count for an "
                        "image of this shape on llava-v1.6's grid pinpoints (e.g. 672x672: 2928) instead of 576")
    p.add_argument("--layer", type=int, default=2, help="pruning layer K (default: 2)")
    p.add_argument("--budget-layers", type=int,
                   help="L in the average-budget rule (default: 32 for --arch, the model's depth for a checkpoint)")
    p.add_argument("--entropy-variant", default="official", choices=VARIANTS)
    p.add_argument("--prune-states", default="query", choices=STATES)
    p.add_argument("--attn-implementation", default="sdpa", choices=ATTN_IMPLEMENTATIONS,
                   help="attention kernel of the language model (default: sdpa; flash_attention_2 needs flash-attn, "
                        "CUDA and half precision)")
    p.add_argument("--prune-seed", type=int, default=0)
    p.add_argument("--method-option", action="append", default=[], metavar="METHOD:NAME=VALUE",
                   help="an option of one method's rows, e.g. pdrop:layer_list=2,8,16 (repeatable)")
    p.add_argument("--text-tokens", type=int, default=62,
                   help="random-prompt mode: non-visual tokens (default 62, an MME prompt)")
    p.add_argument("--questions", help="a LLaVA question file (jsonl with 'text' and 'image'); needs --model-path")
    p.add_argument("--num-questions", type=int, default=1, help="first N questions / random prompts (default 1)")
    p.add_argument("--image-folder", help="images of --questions (a random image stands in for a missing one)")
    p.add_argument("--conv-mode", default="vicuna_v1")
    p.add_argument("--new-tokens", type=int, default=4, help="tokens generated for the latency (default 4)")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--dtype", default="auto", choices=("auto", *_DTYPES),
                   help="auto: float16 on CUDA, bfloat16 on the CPU (half precision, 2-byte KV as in Table 5)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0, help="random weights and prompts")
    p.add_argument("--score", action="append", default=[], metavar="LABEL=VALUE",
                   help="benchmark score to print for a row, e.g. vanilla=1862 entropy@128=1780 (repeatable)")
    p.add_argument("--profile", action="store_true",
                   help="also split one prefill per row into splice / layers before K / pruning step / later layers")
    p.add_argument("--json", metavar="FILE", help="write the rows as a JSON list")
    return p


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = build_parser().parse_args(argv)
    methods = _parse_list(args.methods, str, "--methods")
    budgets = _parse_list(args.budgets, float, "--budgets")
    keeps = _parse_list(args.keeps, int, "--keeps") if args.keeps else None
    if keeps is not None and (not keeps or min(keeps) < 1):
        raise ValueError(f"--keeps {args.keeps!r}: expected positive kept counts, e.g. 640,320,160")
    if args.image_size and (args.model_path or args.with_vision):
        raise ValueError("--image-size is for --arch without --with-vision (random features of LLaVA-1.6's count); "
                         "a checkpoint or a tower sets the count from the image itself")
    if args.image_size and any(method_stage(m) == "vision" for m in methods):
        raise ValueError("--image-size: vision-stage methods need a tower; use language-model methods")
    for m in methods:
        if m not in available_methods():
            known = ", ".join(available_methods())
            raise ValueError(f"--methods: {m!r} is not a registered method; choose from {known}")
        if method_stage(m) == "vision" and not (args.model_path or args.with_vision):
            raise ValueError(f"--methods: {m!r} prunes the vision tower's tokens (layer 0); add --with-vision "
                             "(a random CLIP tower) or give a --model-path")
    if args.repeats < 1 or args.new_tokens < 1 or args.warmup < 0 or args.num_questions < 1:
        raise ValueError("--repeats, --new-tokens and --num-questions must be >= 1, --warmup >= 0")
    if args.questions and not args.model_path:
        raise ValueError("--questions needs --model-path: random weights come without a tokenizer "
                         "(use --text-tokens for random prompts)")
    if args.questions and not os.path.isfile(args.questions):
        raise ValueError(f"--questions {args.questions}: no such file")
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = device_and_dtype(args.device, args.dtype)
    torch.manual_seed(args.seed)

    if args.model_path:
        refuse_anyres(args.model_path, "python -m llava.bench.efficiency --model-path")
    t_load = time.perf_counter()
    if args.model_path:
        tokenizer, model, image_processor, _ = load_pretrained_model(args.model_path, device=str(device),
                                                                     torch_dtype=dtype)
        refuse_anyres(args.model_path, "python -m llava.bench.efficiency --model-path", model.config)
        arch = os.path.basename(os.path.normpath(args.model_path))
        budget_layers = args.budget_layers or model.config.num_hidden_layers
    else:
        arch = args.arch or ("llava-1.5-7b" if device.type == "cuda" else "llava-1.5-7b-cpu")
        model = random_model(arch, args.layers, args.with_vision, device, dtype, args.seed)
        if any("clip_text" in get_spec(m).needs for m in methods):
            attach_random_clip_text(model, arch, args.seed)
        tokenizer = image_processor = None
        budget_layers = args.budget_layers or 32
    model.get_model().set_attn_implementation(args.attn_implementation)
    load_s = time.perf_counter() - t_load
    L = model.config.num_hidden_layers
    if any(method_stage(m) == "llm" for m in methods) and not 1 <= args.layer <= L - 1:
        raise ValueError(f"--layer {args.layer}: must be in [1, {L - 1}] for this {L}-layer model")
    tower = model.get_vision_tower()
    num_visual = tower.num_patches if tower is not None else 576
    if args.image_size:
        from entropyprune.anyres_tokens import anyres_tokens, parse_image_size

        num_visual = anyres_tokens(parse_image_size(args.image_size)).total
        model.num_visual_tokens = num_visual  # set_prune checks the budgets against it
    for avg in ([] if keeps else budgets):
        try:  # the rule every run uses (entropyprune.budget), over --budget-layers layers
            keep_for_budget(budget_layers, args.layer, num_visual, avg_tokens=avg, flags=_BUDGET_FLAGS)
        except BudgetError as err:
            raise ValueError(
                f"{err}; --budget-layers 32 applies the 32-layer (LLaVA-1.5-7B) rule to a shallower model"
            ) from None
    rows = build_rows(methods, budgets, args.layer, budget_layers, args.entropy_variant, args.prune_states,
                      args.prune_seed, num_visual, _parse_method_options(args.method_option, methods), keeps)

    if args.questions:
        prompts = question_prompts(args.questions, args.num_questions, tokenizer, image_processor, model,
                                    args.image_folder, args.conv_mode, device, dtype, args.seed)
        prompt_source = f"{args.questions} (first {len(prompts)})"
    else:
        if args.text_tokens < 1:
            raise ValueError("--text-tokens must be >= 1")
        prompts = random_prompts(model, args.text_tokens, args.num_questions, device, dtype, args.seed, num_visual)
        prompt_source = "random text"

    memory = Memory(device)
    load_before = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    print(f"# model ready in {load_s:.1f} s; {len(rows)} rows x {len(prompts)} prompt(s) x "
          f"({args.warmup} warm-up + {args.repeats} timed) rounds", file=sys.stderr, flush=True)
    with torch.inference_mode():
        for rnd in range(args.warmup + args.repeats):
            timed = rnd >= args.warmup
            shift = rnd % len(rows)
            order = rows[shift:] + rows[:shift]
            t_round = time.perf_counter()
            for p_idx, prompt in enumerate(prompts):
                for row in order:
                    res = run_once(model, prompt, row, args.new_tokens, memory)
                    check_cache(res, model.config, row.prune.layer if row.prune else None, row.label)
                    row.per_prompt[p_idx] = res
                    if timed:
                        row.prefill.append(res["prefill"])
                        row.latency.append(res["latency"])
                        row.peak.append(res["peak"])
                        row.peak_delta.append(res["peak"] - res["peak_base"])
                    elif row.inline:
                        row.inline.clear()  # warm-up calls pay one-off costs (thread pool start-up)
            kind = "timed" if timed else "warm-up"
            print(f"# round {rnd + 1} ({kind}) {time.perf_counter() - t_round:.1f} s", file=sys.stderr, flush=True)
    model.set_prune(None)
    # Means over the prompts of a round, then medians over rounds: each round is one pass over the data.
    for row in rows:
        n = len(prompts)
        row.prefill = [statistics.fmean(row.prefill[i:i + n]) for i in range(0, len(row.prefill), n)]
        row.latency = [statistics.fmean(row.latency[i:i + n]) for i in range(0, len(row.latency), n)]

    cpu = platform.processor() or platform.machine()
    if device.type == "cpu" and os.path.isfile("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as fh:
            m = re.search(r"model name\s*:\s*(.+)", fh.read())
        cpu = m.group(1).strip() if m else cpu
    meta = {
        "device": str(device),
        "machine": torch.cuda.get_device_name(device) if device.type == "cuda" else f"{cpu}, {os.cpu_count()} cores",
        "dtype": str(dtype).replace("torch.", ""),
        "arch": arch,
        "image_size": args.image_size,  # LLaVA-1.6 image shape of the random features (None: 576)
        "layers": L,
        "budget_layers": budget_layers,
        "threads": torch.get_num_threads(),
        "attn_implementation": args.attn_implementation,
        "torch": torch.__version__,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "prompts": len(prompts),
        "prompt_source": prompt_source,
        "vision_tower": model.get_vision_tower() is not None,
        "peak_mem_kind": memory.kind,
        "new_tokens": args.new_tokens,
        # Other work on the machine slows some runs; the load average says how busy it was.
        "load_avg_before": load_before,
        "load_avg_after": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    records = summarise(rows, model, vision_shape(model), meta, max(args.repeats, 5), device,
                         _parse_scores(args.score))
    print(format_table(records))
    for rec in records:
        if rec["select_s"] is not None:
            inline = f", {1e3 * rec['select_inline_s']:.1f} ms inside the prefill" if rec["select_inline_s"] else ""
            score = f" (scorer alone {1e3 * rec['score_s']:.1f} ms)" if rec["score_s"] is not None else ""
            pct = {k: 100 * rec[f"flops_{k}fraction"] for k in ("", "vision_", "method_", "lm_")}
            print(f"{rec['label']}: selection {1e3 * rec['select_s']:.1f} ms{score}{inline} = "
                  f"{100 * rec['select_share']:.2f}% of prefill; FLOPs {pct['']:.1f}% of vanilla = vision "
                  f"{pct['vision_']:.1f}% + method {pct['method_']:.2f}% + language model {pct['lm_']:.1f}%")
    print("KV cache: every run's KVCache.nbytes() == 2 * sum(layer lengths) * kv_heads * head_dim * bytes, "
          "and the lengths match the kept tokens (asserted)")

    if args.profile:
        if device.type != "cpu":
            print("--profile: the per-layer split needs synchronous ops; it runs on the CPU only")
        else:
            for row in rows:
                prof = profile_breakdown(model, prompts[0], row, memory)
                layers = prof["layers"]
                k = row.prune.layer if row.prune is not None else None
                head = f"{row.label}: prefill {prof['prefill']:.3f} s = before layer 0 {prof['before_first_layer']:.3f}"
                per = ", ".join(f"{t:.3f}" for t in layers)
                gaps = sum(prof["between_layers"]) - prof.get("prune_step", 0.0)
                step = f", pruning step {prof['prune_step']:.4f}" if k is not None else ""
                print(f"{head} + layers [{per}]{step} + other gaps {gaps:.4f} + after {prof['after_last_layer']:.4f}")
                for rec in records:
                    if rec["label"] == row.label:
                        rec["profile"] = prof
            model.set_prune(None)

    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(records, fh, indent=2)
        print(f"wrote {len(records)} rows to {args.json}")
    return records


if __name__ == "__main__":
    from llava.utils import run_cli

    run_cli(main)

