"""The efficiency benchmark's rows (vanilla, then each method at each budget), their summary records and the
Table-5-shaped text table."""

from __future__ import annotations

import statistics
from typing import Any

import torch

from entropyprune import flops as F
from entropyprune.config import PruneConfig
from llava.bench.measure import Row, method_flops, time_selection
from llava.bench.workload import lm_shape

GIB, MIB = 2**30, 2**20


# ---------------------------------------------------------------------------------------------------- rows


def build_rows(methods: list[str], budgets: list[float], layer: int, budget_layers: int, variant: str,
               states: str, seed: int, num_visual: int = 576, options: dict | None = None,
               keeps: list[int] | None = None) -> list[Row]:
    """Vanilla, then each method at each average budget (or, with ``keeps``, at each kept count N after the
    pruning layer: LLaVA-1.6's convention, 640 / 320 / 160; the row's average then is
    ``(K * V + (budget_layers - K) * N) / budget_layers``).

    A single-stage method keeps the N that the budget rule gives over ``budget_layers`` layers (32: the
    LLaVA-1.5-7B rule, also on a shallower CPU preset). A multi-stage method's schedule is its own rule
    applied to the model's real depth, so it needs a model deep enough for its layers. A vision-stage method
    runs at layer 0, where an average budget T keeps N = T tokens; one that picks its own count per image
    (adaptive, e.g. PruMerge's default) takes no budget and gets one row, ``METHOD@adaptive``.
    """
    from entropyprune.methods import get_spec
    from entropyprune.options import build_options

    rows = [Row("vanilla", "vanilla", None, None, None)]
    for method in methods:
        opts = (options or {}).get(method, {})
        spec = get_spec(method)
        at = 0 if spec.stage == "vision" else layer
        if spec.adaptive is not None and spec.adaptive(build_options(method, spec.options, opts)):
            cfg = PruneConfig(method=method, layer=at, variant=variant, states=states, seed=seed, options=opts)
            rows.append(Row(f"{method}@adaptive", method, None, None, cfg))
            continue
        for n in keeps or []:
            cfg = PruneConfig(method=method, layer=at, keep=n, variant=variant, states=states, seed=seed,
                              options=opts)
            stages = cfg.schedule(budget_layers, num_visual)  # refuses N > V or a schedule it cannot run
            # what the method realises (DART: a multiple of its pivots, 636 for 640)
            kept = stages[0].keep if len(stages) == 1 and not stages[0].merged else n
            avg = (at * num_visual + (budget_layers - at) * kept) / budget_layers
            rows.append(Row(f"{method}@keep{n}", method, avg, kept, cfg))
        if keeps:
            continue
        for avg in budgets:
            avg = int(avg) if float(avg).is_integer() else avg
            probe = PruneConfig(method=method, layer=at, avg_tokens=avg, variant=variant, states=states,
                                seed=seed, options=opts)
            stages = probe.schedule(budget_layers, num_visual)
            if len(stages) == 1 and not stages[0].merged:
                # One stage: keep what the budget gives over budget_layers layers (what a method realises,
                # e.g. DART's pivot multiples), also on a shallower model.
                keep = stages[0].keep
                cfg = PruneConfig(method=method, layer=at, keep=keep, variant=variant, states=states, seed=seed,
                                  options=opts)
            else:
                cfg, keep = probe, None
            rows.append(Row(f"{method}@{avg:g}", method, avg, keep, cfg))
    return rows


def summarise(rows: list[Row], model, vision: F.VisionShape | None, meta: dict[str, Any],
               select_repeats: int, device: torch.device, scores: dict[str, float]) -> list[dict[str, Any]]:
    shape = lm_shape(model.config)
    config = model.config
    out = []
    vanilla_prefill = vanilla_latency = None
    for row in rows:
        per = list(row.per_prompt.values())
        fractions, totals, kv_vis, vision_parts, lm_parts = [], [], [], [], []
        width = config.num_key_value_heads * config.head_dim
        # The method's own work (one prefill's calls, on the first prompt's captured inputs).
        own = method_flops(row) or 0
        for res in per:
            n_text = res["n_text"]
            v = res["visual"][0]
            keep = res["kept"][0] if row.prune is not None else None
            per_layer = res["visual_by_layer"][0] if row.prune is not None else None
            counts = F.prefill_flops(shape, n_text=n_text, n_visual=v, n_images=len(res["visual"]),
                                     layer=row.prune.layer if row.prune is not None else 0, keep=keep,
                                     vision=vision, visual_per_layer=per_layer)
            fractions.append((counts["total"] + own) / counts["baseline"]["total"])
            totals.append(counts["total"] + own)
            vision_parts.append(counts["vision"] / counts["baseline"]["total"])
            lm_parts.append(counts["prefill"] / counts["baseline"]["total"])
            kv_vis.append(2 * sum(n - n_text for n in res["lengths"]) * width * res["elem"])
        prefill = statistics.median(row.prefill)
        latency = statistics.median(row.latency)
        if row.prune is None:
            vanilla_prefill, vanilla_latency = prefill, latency
        frac = statistics.fmean(fractions)
        select_s, score_s = time_selection(row, select_repeats, device)
        first = per[0]
        rec: dict[str, Any] = {
            "method": row.method,
            "label": row.label,
            "avg_tokens": row.avg_tokens if row.avg_tokens is not None else first["visual"][0],
            "keep": first["kept"][0],
            "layer": row.prune.layer if row.prune is not None else None,
            "visual_per_layer": first["visual_by_layer"][0],
            "avg_tokens_this_model": statistics.fmean(first["visual_by_layer"][0]),
            "text_tokens": first["n_text"],
            "visual_tokens": first["visual"][0],
            "layer_lengths": first["lengths"],
            "flops": round(statistics.fmean(totals)),
            "flops_fraction": frac,
            # Parts of the fraction, each over vanilla's total: vision tower + projector, the method's own
            # matrix products (FlopCounterMode), the language model's prefill.
            "flops_vision_fraction": statistics.fmean(vision_parts),
            "flops_method_fraction": own / F.prefill_flops(
                shape, n_text=first["n_text"], n_visual=first["visual"][0], n_images=len(first["visual"]),
                vision=vision)["total"],
            "flops_lm_fraction": statistics.fmean(lm_parts),
            "method_flops": own,
            "flops_bound_speedup": 1 / frac,
            "prefill_s": prefill,
            "latency_s": latency,
            "new_tokens": meta["new_tokens"],
            "prefill_min_s": min(row.prefill),
            "latency_min_s": min(row.latency),
            "prefill_samples_s": row.prefill,
            "latency_samples_s": row.latency,
            "kv_bytes": round(statistics.fmean(r["kv"] for r in per)),
            "kv_visual_bytes": round(statistics.fmean(kv_vis)),
            "kv_checked": True,
            "peak_mem_bytes": max(row.peak),
            "peak_mem_delta_bytes": max(row.peak_delta),
            "select_s": select_s,
            "score_s": score_s,
            "select_share": select_s / prefill if select_s is not None else None,
            "score_share": score_s / prefill if score_s is not None else None,
            "select_inline_s": statistics.median(row.inline) if row.inline else None,
            "score": scores.get(row.label),
            **meta,
        }
        out.append(rec)
    vanilla_min = out[0]["prefill_min_s"]
    for rec in out:
        rec["prefill_speedup_min"] = vanilla_min / rec["prefill_min_s"]
        rec["speedup_vs_bound_min"] = rec["prefill_speedup_min"] / rec["flops_bound_speedup"]
        rec["prefill_speedup"] = vanilla_prefill / rec["prefill_s"]
        rec["latency_speedup"] = vanilla_latency / rec["latency_s"]
        rec["speedup_vs_bound"] = rec["prefill_speedup"] / rec["flops_bound_speedup"]
    return out


def format_table(records: list[dict[str, Any]]) -> str:
    """Table 5's columns (Prefill, Lat., KV, Mem., FLOPs, Score) plus the speedup against the FLOPs bound."""
    r0 = records[0]
    mem = "Mem. (GB)" if r0["peak_mem_kind"].startswith("cuda") else "RSS (GB)"
    lines = [
        f"{r0['arch']}: {r0['layers']} layers, {r0['device']} ({r0['machine']}), {r0['dtype']}, "
        f"{r0['threads']} threads, torch {r0['torch']}; {r0['prompts']} prompt(s) ({r0['prompt_source']}), "
        f"{r0['text_tokens']} text + {r0['visual_tokens']} visual tokens; vision tower "
        f"{'timed' if r0['vision_tower'] else 'absent (random image features)'}; medians of {r0['repeats']} "
        f"repeats; latency = {r0['new_tokens']} new tokens; load average {r0['load_avg_before']} -> "
        f"{r0['load_avg_after']}",
        f"{'Method':<16}{'Tok.':>6}{'Keep':>6}{'Prefill (s)':>13}{'Lat. (s)':>10}{'KV (MiB)':>10}{'KVvis':>8}"
        f"{mem:>10}{'+Mem (MiB)':>11}{'FLOPs (%)':>11}{'Speedup':>9}{'Bound':>7}{'Sp/Bd':>7}{'Select':>9}{'Score':>8}",
    ]
    for r in records:
        sel = f"{100 * r['select_share']:.2f}%" if r["select_share"] is not None else "-"
        score = f"{r['score']:g}" if r["score"] is not None else "-"
        lines.append(
            f"{r['label']:<16}{r['avg_tokens']:>6g}{r['keep']:>6}{r['prefill_s']:>13.3f}{r['latency_s']:>10.3f}"
            f"{r['kv_bytes'] / MIB:>10.2f}{r['kv_visual_bytes'] / MIB:>8.2f}{r['peak_mem_bytes'] / GIB:>10.2f}"
            f"{r['peak_mem_delta_bytes'] / MIB:>11.1f}"
            f"{100 * r['flops_fraction']:>11.1f}{r['prefill_speedup']:>8.2f}x{r['flops_bound_speedup']:>6.2f}x"
            f"{100 * r['speedup_vs_bound']:>6.0f}%{sel:>9}{score:>8}"
        )
    lines.append("best of the repeats instead of the median (less sensitive to other load on the machine): "
                 + ", ".join(f"{r['label']} {r['prefill_speedup_min']:.2f}x = {100 * r['speedup_vs_bound_min']:.0f}% "
                             "of bound" for r in records[1:]))
    lines.append(
        "Tok. = average visual tokens (the budget); Keep = kept after layer K; KV = whole cache after prefill, "
        "KVvis = its visual tokens (Table 5's KV); Mem./RSS = peak of the run, weights included, +Mem = its rise "
        "over what was held before the run; FLOPs = decoder layers (+ vision tower when timed); Speedup = "
        "vanilla prefill / this prefill; Bound = 1 / FLOPs fraction; Select = pruning method's share of prefill"
    )
    return "\n".join(lines)


