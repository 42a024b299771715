"""Table 5 of the paper: the efficiency rows of ``llava.bench.efficiency`` joined with the MME run records.

    python -m llava.bench.table5_report --efficiency results/efficiency/llava-v1.5-7b-table5.json \\
        --results-dir results [--match 'llava-v1.5-7b-table5-*'] [--out results/ablation/llava-v1.5-7b-table5]

``scripts/ablation/efficiency_sweep.sh`` makes both and calls this. Each efficiency row (``vanilla``,
``METHOD@T``) is matched with the MME record of the same method, average-token budget T and pruning layer
(the unpruned record for ``vanilla``), among the records under ``RESULTS_DIR/mme/`` whose run name matches
``--match``. A record of another checkpoint than the timed one is refused (warning); when several records
fit a row the newest is used (warning); a row without a record shows no score. Columns, as the paper's:

- Prefill (s), Lat. (s): per question, the medians of the efficiency JSON (``prefill_s``, ``latency_s``:
  prompt to first token; to the last of ``new_tokens`` tokens). The paper's are totals over its MME run.
- KV (MB): the visual tokens' part of the KV cache after the prefill (``kv_visual_bytes``, MiB; 288.0 for
  LLaVA-1.5-7B in float16), Mem. (GB): the run's peak memory (``peak_mem_bytes``; CUDA allocator peak on a
  GPU, the process's peak resident set on the CPU), FLOPs (%): prefill FLOPs over vanilla's.
- MME: the record's perception + cognition total (Table 5's convention: 1862 for LLaVA-1.5-7B) and,
  beside it, perception alone.

Writes ``table5.md``, ``table5.csv`` and ``table5.json`` into ``--out`` and prints the markdown. Within
each budget group the best value of each column is bold (lowest cost, highest score).
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import glob
import json
import os
import sys
from typing import Any

GIB, MIB = 2**30, 2**20
# column key -> (header, better: "low" | "high", format)
COLUMNS = {
    "prefill_s": ("Prefill (s)", "low", "{:.3f}"),
    "latency_s": ("Lat. (s)", "low", "{:.3f}"),
    "kv_mb": ("KV (MB)", "low", "{:.1f}"),
    "mem_gb": ("Mem. (GB)", "low", "{:.2f}"),
    "flops_pct": ("FLOPs (%)", "low", "{:.1f}"),
    "mme_total": ("MME (P+C)", "high", "{:.1f}"),
    "mme_perception": ("MME-P", "high", "{:.1f}"),
}
_NEEDED = ("label", "method", "avg_tokens", "layer", "prefill_s", "latency_s", "kv_visual_bytes", "peak_mem_bytes",
           "flops_fraction", "arch")


def warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr)


def load_efficiency(path: str) -> list[dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as f:
            rows = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"--efficiency {path}: no such file (python -m llava.bench.efficiency --json writes it)"
                         ) from None
    except json.JSONDecodeError as err:
        raise ValueError(f"--efficiency {path}: not JSON ({err})") from None
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"--efficiency {path}: expected the non-empty list of rows that llava.bench.efficiency writes")
    for i, row in enumerate(rows):
        missing = [k for k in _NEEDED if not isinstance(row, dict) or k not in row]
        if missing:
            raise ValueError(f"--efficiency {path}: row {i} has no {', '.join(missing)}; is it "
                             "llava.bench.efficiency's --json output?")
    return rows


def _key(method: Any, avg: Any, layer: Any) -> tuple:
    if method in (None, "vanilla"):
        return ("vanilla", None, None)
    return (str(method), float(avg), int(layer))


def load_mme_records(results_dir: str, match: str | None, arch: str, states: str = "query",
                     variant: str = "official") -> dict[tuple, dict[str, Any]]:
    """(method, avg budget, layer) -> the newest matching MME record of checkpoint ``arch`` whose pruning used
    ``states`` and ``variant`` (the settings of the timed rows)."""
    if not os.path.isdir(results_dir):
        raise ValueError(f"--results-dir {results_dir}: no such folder")
    found: dict[tuple, tuple[float, str, dict]] = {}
    for path in sorted(glob.glob(os.path.join(results_dir, "mme", "*.json"))):
        run = os.path.splitext(os.path.basename(path))[0]
        if match and not fnmatch.fnmatch(run, match):
            continue
        try:
            with open(path, encoding="utf-8") as f:
                rec = json.load(f)
        except (OSError, json.JSONDecodeError) as err:
            warn(f"{path}: unreadable ({err}); skipped")
            continue
        if not isinstance(rec, dict) or rec.get("benchmark") != "mme":
            warn(f"{path}: not an MME run record; skipped")
            continue
        model = os.path.basename(os.path.normpath(str(rec.get("model_path") or rec.get("model") or "")))
        if model != arch:
            warn(f"{path}: checkpoint {model!r}, but the timings are of {arch!r}; refused")
            continue
        if rec.get("method") is None:
            key = _key(None, None, None)
        elif (rec.get("states") or "query", rec.get("variant") or "official") != (states, variant):
            warn(f"{path}: {rec.get('states')} states, {rec.get('variant')} variant, but the timed rows are "
                 f"{states}, {variant}; not in this table")
            continue
        else:
            budget = rec.get("budget") or {}
            if "avg_tokens" not in budget:
                warn(f"{path}: budget {budget or None} is not an average-token budget like Table 5's; skipped")
                continue
            key = _key(rec["method"], budget["avg_tokens"], rec.get("layer"))
        mtime = os.path.getmtime(path)
        if key in found:
            (older, newer) = sorted([found[key][:2], (mtime, path)])
            label = key[0] + (f"@{key[1]:g}" if key[1] is not None else "")
            warn(f"{older[1]} and {newer[1]} are both {label} on MME; using the newer, {newer[1]}")
            if newer[1] != path:
                continue
        found[key] = (mtime, path, rec)
    return {k: v[2] | {"_path": v[1]} for k, v in found.items()}


def build_rows(eff: list[dict[str, Any]], records: dict[tuple, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for r in eff:
        vanilla = r["method"] in (None, "vanilla")
        rec = records.get(_key(r["method"], r["avg_tokens"], r["layer"]))
        scores = (rec or {}).get("scores") or {}
        rows.append({
            "label": r["label"],
            "method": "vanilla" if vanilla else r["method"],
            "tokens": r["avg_tokens"],
            "layer": r["layer"],
            "prefill_s": r["prefill_s"],
            "latency_s": r["latency_s"],
            "kv_mb": r["kv_visual_bytes"] / MIB,
            "mem_gb": r["peak_mem_bytes"] / GIB,
            "flops_pct": 100 * r["flops_fraction"],
            "mme_total": scores.get("total"),
            "mme_perception": scores.get("perception"),
            "run": (rec or {}).get("run_name"),
            "record": (rec or {}).get("_path"),
        })
        if rec is None:
            warn(f"{r['label']}: no MME record of {rows[-1]['method']}"
                 + ("" if vanilla else f" at {r['avg_tokens']:g} average tokens, layer {r['layer']}") + "; no score")
    return rows


def _groups(rows: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    vanilla = [r for r in rows if r["method"] == "vanilla"]
    full = vanilla[0]["tokens"] if vanilla else 576
    out = []
    if vanilla:
        out.append((f"Upper bound, {full:g} tokens (100%)", vanilla))
    budgets = list(dict.fromkeys(r["tokens"] for r in rows if r["method"] != "vanilla"))
    for t in budgets:
        group = [r for r in rows if r["method"] != "vanilla" and r["tokens"] == t]
        out.append((f"Retain {t:g} tokens (-{100 * (1 - t / full):.1f}%)", group))
    return out


def render_markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = ["# Efficiency on MME (paper Table 5)", "",
             f"{meta.get('arch')} on {meta.get('device')} ({meta.get('machine')}), {meta.get('dtype')}; timings: "
             f"medians of {meta.get('repeats')} rounds over {meta.get('prompts')} prompt(s) "
             f"({meta.get('prompt_source')}), per question; latency = {meta.get('new_tokens')} new tokens. "
             "MME: the run records' scores (P+C = perception + cognition, as Table 5; P = perception). "
             "Best of each budget group in bold.", "",
             "| Method | " + " | ".join(h for h, _, _ in COLUMNS.values()) + " |",
             "| --- |" + " ---: |" * len(COLUMNS)]
    for title, group in _groups(rows):
        lines.append(f"| *{title}* |" + " |" * len(COLUMNS))
        best = {}
        for key, (_, better, _) in COLUMNS.items():
            values = [r[key] for r in group if r[key] is not None]
            if len(group) > 1 and values:
                best[key] = min(values) if better == "low" else max(values)
        for r in group:
            cells = []
            for key, (_, _, fmt) in COLUMNS.items():
                v = r[key]
                text = "-" if v is None else fmt.format(v)
                cells.append(f"**{text}**" if v is not None and best.get(key) == v else text)
            lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    missing = [r["label"] for r in rows if r["mme_total"] is None]
    if missing:
        lines += ["", f"No MME record for: {', '.join(missing)}."]
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict[str, Any]], path: str) -> None:
    fields = ["label", "method", "tokens", "layer", *COLUMNS, "run"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m llava.bench.table5_report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--efficiency", required=True, metavar="FILE", help="llava.bench.efficiency's --json output")
    p.add_argument("--results-dir", required=True, metavar="DIR", help="folder with mme/<run>.json records")
    p.add_argument("--match", metavar="GLOB", help="only MME runs whose name matches, e.g. 'llava-v1.5-7b-table5-*'")
    p.add_argument("--out", metavar="DIR", help="where table5.md/.csv/.json go (default: --results-dir)")
    p.add_argument("--states", default="query", choices=("query", "key"),
                   help="only pruned records with these states (the timed rows'; default query)")
    p.add_argument("--variant", default="official", choices=("official", "paper"),
                   help="only pruned records of this entropy variant (default official)")
    args = p.parse_args(argv)
    eff = load_efficiency(args.efficiency)
    arch = eff[0]["arch"]
    records = load_mme_records(args.results_dir, args.match, arch, args.states, args.variant)
    rows = build_rows(eff, records)
    markdown = render_markdown(rows, eff[0])
    out = args.out or args.results_dir
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "table5.md"), "w", encoding="utf-8") as f:
        f.write(markdown)
    write_csv(rows, os.path.join(out, "table5.csv"))
    with open(os.path.join(out, "table5.json"), "w", encoding="utf-8") as f:
        json.dump({"efficiency": os.path.abspath(args.efficiency), "rows": rows}, f, indent=2)
    print(markdown)
    print(f"wrote {os.path.join(out, 'table5.md')}, table5.csv, table5.json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from llava.utils import run_cli

    run_cli(main)
