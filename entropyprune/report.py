"""Run records -> tables and a figure of score by pruning layer and method (paper Figure 5).

    entropyprune report results [--out DIR] [--match 'llava-v1.5-7b-layersweep-*'] [--benchmark mme]
    entropyprune report results --table comparison [--published]   (paper Table 1: entropyprune.comparison)

Reads the records the benchmark scripts write, ``RESULTS_DIR/<benchmark>/<run>.json`` with the fields
``model, benchmark, method, layer, keep, avg_tokens, scores{...}``, and writes one markdown table per
benchmark and headline score (rows: method and whatever else differs between the runs, e.g. the
budget; columns: layer K) plus ``report.png``: score against layer, one line per row of the table, one
panel per benchmark. Records that cannot be placed (missing fields, no headline score, layer "auto"
not resolved) are skipped with a warning on stderr. Runs without pruning (method null, "none" or
"vanilla") are the unpruned reference: a note under the table and a dashed line in the figure.

Headline scores, looked up in ``scores`` with case and punctuation ignored ("IMG-Accuracy" =
"img_accuracy"): MME Perception (and Total), TextVQA Accuracy, SQA IMG-Accuracy, MMBench / MMBench-CN
CircularEval (SingleEval when no record has CircularEval), MM-Vet Total; GQA, MMStar, AI2D accuracy, POPE
mean F1, OCRBench Final Score and MMMU validation accuracy (each scorer's `overall`).
"""

from __future__ import annotations

import argparse
import fnmatch
import glob
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any

from entropyprune.figures import panels_figure, save
from entropyprune.files import warn

__all__ = ["Metric", "Record", "build_report", "headline_metrics", "load_records", "main_report"]


@dataclass(frozen=True)
class Metric:
    label: str  # e.g. "Perception"
    keys: tuple[str, ...]  # normalised score names, the first present wins


# Benchmark (normalised name) -> display name, and its headline metrics, each a list of alternatives
# in order of preference: the first alternative present in any record of that benchmark is used.
_BENCHMARKS: dict[str, tuple[str, list[list[Metric]]]] = {
    "mme": ("MME", [[Metric("Perception", ("perception",))], [Metric("Total", ("total",))]]),
    "textvqa": ("TextVQA", [[Metric("Accuracy", ("accuracy", "acc"))]]),
    "sqa": ("SQA-IMG", [[Metric("IMG-Accuracy", ("imgaccuracy", "imgacc"))]]),
    "mmbench": ("MMBench", [[Metric("CircularEval", ("circulareval", "circular")),
                             Metric("SingleEval", ("singleeval", "single"))]]),
    "mmbenchcn": ("MMBench-CN", [[Metric("CircularEval", ("circulareval", "circular")),
                                  Metric("SingleEval", ("singleeval", "single"))]]),
    "mmvet": ("MM-Vet", [[Metric("Total", ("total",))]]),
    "gqa": ("GQA", [[Metric("Accuracy", ("overall",))]]),
    "pope": ("POPE", [[Metric("F1", ("overall",))]]),
    "mmstar": ("MMStar", [[Metric("Accuracy", ("overall",))]]),
    "ai2d": ("AI2D", [[Metric("Accuracy", ("overall",))]]),
    "ocrbench": ("OCRBench", [[Metric("Final Score", ("overall",))]]),
    "mmmu": ("MMMU", [[Metric("Val Accuracy", ("overall",))]]),
}
_ALIASES = {"scienceqa": "sqa", "scienceqaimg": "sqa", "sqaimg": "sqa", "mmbenchen": "mmbench"}
# Unknown benchmarks: the first of these score names, else the only score there is.
_GENERIC = [[Metric("score", ("score", "accuracy", "total"))]]
_UNPRUNED = {"", "none", "vanilla", "baseline", "unpruned"}
# Fields that tell runs of one benchmark apart, shown in a row's label when they differ between runs.
_ROW_FIELDS = ("method", "budget", "states", "variant", "model")
_BUDGET_NAMES = {"avg_tokens": "avg", "keep": "keep", "ratio": "ratio"}


def _norm(text: Any) -> str:
    return re.sub(r"[^a-z0-9]", "", str(text).lower())


def benchmark_key(name: str) -> str:
    key = _norm(name)
    return _ALIASES.get(key, key)


@dataclass
class Record:
    path: str
    run: str
    benchmark: str  # normalised key
    method: str | None  # None for an unpruned run
    layer: int | None
    fields: dict[str, Any]
    scores: dict[str, float]  # normalised name -> value
    mtime: float
    data: dict[str, Any] = field(default_factory=dict)  # the whole record, as read


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def _parse_record(path: str, data: Any, folder_benchmark: str | None) -> Record | None:
    where = os.path.relpath(path)
    if not isinstance(data, dict):
        warn(f"{where}: not a JSON object; skipped")
        return None
    bench = data.get("benchmark") or folder_benchmark
    if not bench:
        warn(f"{where}: no 'benchmark' field; skipped")
        return None
    scores_raw = data.get("scores")
    if not isinstance(scores_raw, dict):
        warn(f"{where}: no 'scores' object; skipped")
        return None
    scores = {_norm(k): v for k, v in scores_raw.items() if _number(v) is not None}
    method = data.get("method")
    unpruned = method is None or _norm(method) in _UNPRUNED
    layer = data.get("layer")
    if not unpruned:
        if isinstance(layer, str) and layer.strip().isdigit():
            layer = int(layer)
        if isinstance(layer, bool) or not isinstance(layer, int):
            why = "'auto' was not resolved to a number" if layer == "auto" else f"is {layer!r}"
            warn(f"{where}: method {method!r} but its layer {why}; skipped")
            return None
    fields = {f: data.get(f) for f in _ROW_FIELDS}
    fields["budget"] = _budget_label(data)
    run = os.path.splitext(os.path.basename(path))[0]
    return Record(path, run, benchmark_key(bench), None if unpruned else str(method),
                  None if unpruned else layer, fields, scores, os.path.getmtime(path), data)


def _budget_label(data: dict) -> str | None:
    """The budget as asked, e.g. "avg=192".

    The records' ``keep`` and ``avg_tokens`` are what a run resolved to: at a fixed average budget N
    changes with the layer, so they cannot name a row. ``budget`` (as asked) can; records without it
    fall back to ``avg_tokens``, then ``keep``, then ``ratio``.
    """
    budget = data.get("budget")
    if isinstance(budget, dict) and len(budget) == 1:
        ((name, value),) = budget.items()
        return f"{_BUDGET_NAMES.get(name, name)}={_fmt(value)}"
    for name in ("avg_tokens", "keep", "ratio"):
        if data.get(name) is not None:
            return f"{_BUDGET_NAMES[name]}={_fmt(data[name])}"
    return None


def load_records(results_dir: str, match: str | None = None, benchmarks: list[str] | None = None) -> list[Record]:
    """Every ``<benchmark>/<run>.json`` (and ``<run>.json``) under ``results_dir`` that can be placed.

    ``match``: a glob on the run name (the file name without .json); ``benchmarks``: keep only these.
    """
    wanted = {benchmark_key(b) for b in benchmarks} if benchmarks else None
    if not os.path.isdir(results_dir):
        raise FileNotFoundError(f"results folder not found: {results_dir}")
    paths = sorted(glob.glob(os.path.join(results_dir, "*", "*.json")) + glob.glob(os.path.join(results_dir, "*.json")))
    records = []
    for path in paths:
        run = os.path.splitext(os.path.basename(path))[0]
        if match and not fnmatch.fnmatch(run, match):
            continue
        parent = os.path.dirname(path)
        folder = os.path.basename(parent) if os.path.abspath(parent) != os.path.abspath(results_dir) else None
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError) as err:
            warn(f"{os.path.relpath(path)}: unreadable ({err}); skipped")
            continue
        rec = _parse_record(path, data, folder)
        if rec is not None and (wanted is None or rec.benchmark in wanted):
            records.append(rec)
    return records


def headline_metrics(benchmark: str, records: list[Record]) -> list[Metric]:
    """The metrics reported for ``benchmark``: per headline, the first alternative any record has."""
    alternatives = _BENCHMARKS.get(benchmark, (None, _GENERIC))[1]
    chosen = []
    for options in alternatives:
        for metric in options:
            if any(_value(r, metric) is not None for r in records):
                chosen.append(metric)
                break
    if not chosen and benchmark not in _BENCHMARKS:
        # An unknown benchmark whose runs all carry exactly one score: that one is the headline.
        names = {k for r in records for k in r.scores}
        if len(names) == 1:
            name = names.pop()
            chosen.append(Metric(name, (name,)))
    return chosen


def _value(record: Record, metric: Metric) -> float | None:
    for key in metric.keys:
        if key in record.scores:
            return float(record.scores[key])
    return None


def _fmt(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _row_label(record: Record, varying: list[str]) -> str:
    parts = [record.method]
    for f in varying:
        if f == "method" or record.fields.get(f) is None:
            continue
        value = _fmt(record.fields[f])
        parts.append(value if f == "budget" else f"{f}={value}")
    return parts[0] if len(parts) == 1 else f"{parts[0]} ({', '.join(parts[1:])})"


@dataclass
class Table:
    benchmark: str
    title: str
    metric: Metric
    layers: list[int]
    rows: dict[str, dict[int, tuple[float, Record]]]  # label -> layer -> (score, record)
    unpruned: list[tuple[float, Record]]


def build_tables(records: list[Record]) -> list[Table]:
    by_bench: dict[str, list[Record]] = {}
    for r in records:
        by_bench.setdefault(r.benchmark, []).append(r)
    order = list(_BENCHMARKS) + sorted(b for b in by_bench if b not in _BENCHMARKS)
    tables = []
    for bench in order:
        recs = by_bench.get(bench)
        if not recs:
            continue
        metrics = headline_metrics(bench, recs)
        display = _BENCHMARKS.get(bench, (bench, None))[0]
        if not metrics:
            warn(f"{display}: no record has a headline score ({', '.join(sorted({k for r in recs for k in r.scores}))}"
                  " found); skipped")
            continue
        pruned = [r for r in recs if r.method is not None]
        varying = [f for f in _ROW_FIELDS if len({_fmt(r.fields.get(f)) for r in pruned}) > 1]
        for metric in metrics:
            rows: dict[str, dict[int, tuple[float, Record]]] = {}
            unpruned = []
            for r in sorted(recs, key=lambda r: r.mtime):
                value = _value(r, metric)
                if value is None:
                    warn(f"{os.path.relpath(r.path)}: no {display} {metric.label} score; skipped in that table")
                    continue
                if r.method is None:
                    unpruned.append((value, r))
                    continue
                cells = rows.setdefault(_row_label(r, varying), {})
                if r.layer in cells:
                    old = cells[r.layer][1]
                    warn(f"{display} {metric.label}: {os.path.relpath(old.path)} and {os.path.relpath(r.path)} are "
                          f"the same run (layer {r.layer}); using the newer, {os.path.relpath(r.path)}")
                cells[r.layer] = (value, r)
            if not rows and not unpruned:
                continue
            layers = sorted({k for cells in rows.values() for k in cells})
            tables.append(Table(bench, f"{display}: {metric.label}", metric, layers, dict(sorted(rows.items())),
                                unpruned))
    return tables


def render_markdown(tables: list[Table]) -> str:
    if not tables:
        return "No results to report.\n"
    out = ["# Score by pruning layer", "",
           "K is the pruning layer (0-based): layers 0..K-1 see every visual token. Best layer per row in bold.", ""]
    for t in tables:
        out += [f"## {t.title}", ""]
        if t.rows:
            out.append("| method | " + " | ".join(f"K={k}" for k in t.layers) + " |")
            out.append("| --- |" + " ---: |" * len(t.layers))
            for label, cells in t.rows.items():
                best = max(v for v, _ in cells.values())
                row = []
                for k in t.layers:
                    if k not in cells:
                        row.append("")
                        continue
                    v = cells[k][0]
                    row.append(f"**{v:.2f}**" if v == best and len(cells) > 1 else f"{v:.2f}")
                out.append(f"| {label} | " + " | ".join(row) + " |")
            out.append("")
        for value, r in t.unpruned:
            out.append(f"Unpruned: {value:.2f} (run `{r.run}`).")
        if t.unpruned:
            out.append("")
    return "\n".join(out)


def plot_tables(tables: list[Table], path: str) -> bool:
    """Figure 5: score against layer, one line per method row, one panel per table; False if empty."""
    tables = [t for t in tables if t.rows]
    if not tables:
        return False
    fig, axes = panels_figure(len(tables))
    for ax, t in zip(axes, tables, strict=True):
        for label, cells in t.rows.items():
            ks = sorted(cells)
            ax.plot(ks, [cells[k][0] for k in ks], marker="o", linewidth=1.5, label=label)
        for value, r in t.unpruned:
            ax.axhline(value, color="0.4", linestyle="--", linewidth=1, label=f"unpruned ({r.run})")
        ax.set_xticks(t.layers)
        ax.set_title(t.title, fontsize=10)
        ax.set_xlabel("pruning layer K")
        ax.set_ylabel(t.metric.label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save(fig, path)
    return True


def build_report(results_dir: str, out_dir: str | None = None, match: str | None = None,
                 benchmarks: list[str] | None = None) -> dict[str, Any]:
    """Read the records, write ``report.md`` and ``report.png`` into ``out_dir`` (default: results_dir)."""
    records = load_records(results_dir, match, benchmarks)
    tables = build_tables(records)
    if not tables:  # an empty report.md would read as "ran, nothing to show"; the warnings above say why
        raise ValueError(f"no run records to report in {results_dir} (<benchmark>/<run>.json"
                         + (f" matching {match!r}" if match else "") + ")")
    markdown = render_markdown(tables)
    out_dir = out_dir or results_dir
    os.makedirs(out_dir, exist_ok=True)
    md_path = os.path.join(out_dir, "report.md")
    with open(md_path, "w", encoding="utf-8") as f:
        f.write(markdown)
    png_path = os.path.join(out_dir, "report.png")
    has_png = plot_tables(tables, png_path)
    return {"markdown": markdown, "report_md": md_path, "report_png": png_path if has_png else None,
            "records": len(records), "tables": len(tables)}


# ----------------------------------------------------------------------------------------------------------
# Command line (registered in llava.cli)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("results_dir", metavar="RESULTS_DIR", help="folder with <benchmark>/<run>.json records")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="where the report files go (default: RESULTS_DIR)")
    p.add_argument("--match", default=None, metavar="GLOB",
                   help="only runs whose name (file name without .json) matches, e.g. 'llava-v1.5-7b-layersweep-*'")
    p.add_argument("--benchmark", action="append", metavar="NAME", help="only this benchmark (repeatable)")
    p.add_argument("--table", choices=("layers", "comparison", "all"), default="layers",
                   help="layers (default): score by pruning layer, report.md/.png (paper Fig. 5); comparison: "
                        "methods by budget on every benchmark with Acc. and Rel. (paper Table 1), comparison.md/"
                        ".tex/.csv and comparison_radar.png (Fig. 1b) / comparison_acc_tokens.png; all: both")
    g = p.add_argument_group("comparison table (--table comparison or all)")
    g.add_argument("--mme", choices=("total", "perception"), default="total",
                   help="MME score of the table and how it enters Acc.: total = perception + cognition, / 2800 "
                        "(default, as the paper's 1862); perception, / 2000")
    g.add_argument("--rel", choices=("mean-ratio", "acc-ratio"), default="mean-ratio",
                   help="Rel.: mean over benchmarks of score / upper bound (default), or Acc. / upper bound's Acc.")
    g.add_argument("--published", action="store_true",
                   help="show the published LLaVA-1.5-7B numbers (entropyprune/published.py) beside ours, marked †; "
                        "only when the records' checkpoint is llava-v1.5-7b")
    g.add_argument("--published-force", action="store_true",
                   help="with --published: show them whatever the records' checkpoint is called")
    g.add_argument("--rank-published", action="store_true",
                   help="rank published rows with ours for bold / underline (default: ours only)")
    g.add_argument("--allow-mixed", action="store_true",
                   help="include records that disagree (checkpoint, commit, scorer, incomplete), footnoted, "
                        "instead of refusing them")
    g.add_argument("--radar-budget", type=float, default=None, metavar="TOKENS",
                   help="budget of the radar chart (default: the largest pruned budget)")


def main_report(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from entropyprune import comparison as C

    table = getattr(args, "table", "layers")
    if table in ("layers", "all"):
        try:
            rep = build_report(args.results_dir, args.out, args.match, args.benchmark)
        except FileNotFoundError as err:
            parser.error(str(err))
        print(rep["markdown"])
        written = [rep["report_md"]] + ([rep["report_png"]] if rep["report_png"] else [])
        print(f"wrote {', '.join(written)}", file=sys.stderr)
    if table in ("comparison", "all"):
        try:
            records = load_records(args.results_dir, args.match, args.benchmark)
        except FileNotFoundError as err:
            parser.error(str(err))
        comp = C.build_comparison(records, mme=args.mme, rel_mode=args.rel, published=args.published,
                                  published_force=args.published_force, rank_published=args.rank_published,
                                  allow_mixed=args.allow_mixed)
        paths = C.write_comparison(comp, args.out or args.results_dir, args.radar_budget)
        print(C.render_markdown(comp))
        print(f"wrote {', '.join(p for p in paths.values() if p)}", file=sys.stderr)
    return 0
