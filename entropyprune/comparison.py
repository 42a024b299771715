"""Run records -> the paper's Table 1 layout: methods by budget on every benchmark, with Acc. and Rel.

    entropyprune report results --table comparison [--published] [--mme total|perception] [--allow-mixed]

Rows are grouped by budget (the unpruned "upper bound" first, then the average-token budgets from the
largest down) and ordered by method inside a group; columns are the benchmarks present, in the order of
the paper's Section 4.1 (MMB, MMB-CN, MME, SQA, TextVQA, MM-Vet, MMStar, AI2D, OCRBench, MMMU; then GQA,
POPE and any other), then Acc. and Rel.:

  s_b      = the headline score of benchmark b in %: MME / 2800 * 100 (perception + cognition; with
             --mme perception: MME-P / 2000 * 100), OCRBench / 1000 * 100, every other score as it is
  Acc.     = mean over the table's benchmarks of s_b
  Rel.     = mean over the table's benchmarks of score_b / upper_b * 100 (upper: the unpruned row of the
             same origin); with --rel acc-ratio: Acc. / Acc.(upper) * 100

Acc. and Rel. are left empty for a row that misses one of the table's benchmarks. Best and second best
per column inside a budget group are bold and underlined (Markdown ``**x**`` / ``<u>x</u>``, LaTeX
``\\textbf`` / ``\\underline``), compared as displayed (rounded); ties share the mark, and the second mark
goes to the next lower displayed value. Only our runs are ranked (published rows too with
--rank-published); the upper-bound group and a column with fewer than two ranked values get no marks.

Records of one table must agree on the checkpoint (``model``), the code (``git_commit``), each
benchmark's scorer (``scorer``) and be complete (``answers`` == ``questions``); otherwise the report is
refused, or with --allow-mixed the odd records' cells carry a numbered footnote saying what differs. Two
records for one cell (method, layer, states, variant, budget, benchmark) are an error naming both files.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from entropyprune import published as P
from entropyprune.files import warn
from entropyprune.report import Metric, Record, headline_metrics

# The paper's order (Section 4.1), then the peers' GQA and POPE; anything else follows alphabetically.
BENCH_ORDER = ("mmbench", "mmbenchcn", "mme", "sqa", "textvqa", "mmvet", "mmstar", "ai2d", "ocrbench", "mmmu",
               "gqa", "pope")
MD_NAMES = {"mmbench": "MMB", "mmbenchcn": "MMB-CN", "mme": "MME", "sqa": "SQA", "textvqa": "TextVQA",
            "mmvet": "MM-Vet", "mmstar": "MMStar", "ai2d": "AI2D", "ocrbench": "OCRBench", "mmmu": "MMMU",
            "gqa": "GQA", "pope": "POPE"}
TEX_NAMES = {"mmbenchcn": r"MMB\textsuperscript{CN}", "textvqa": r"VQA\textsuperscript{T}", "mmvet": "MMVet",
             "ocrbench": r"OCR\textsuperscript{B}"}
METHOD_NAMES = {"random": "Random", "fastv": "FastV", "pdrop": "PDrop", "sparsevlm": "SparseVLM",
                "prumerge": "PruMerge", "prumerge_plus": "PruMerge+", "visionzip": "VisionZip",
                "vispruner": "VisPruner", "dart": "DART", "divprune": "DivPrune", "cdpruner": "CDPruner",
                "entropy": "EntropyPrune"}
METHOD_ORDER = ("random", "fastv", "pdrop", "sparsevlm", "prumerge", "prumerge_plus", "visionzip", "vispruner",
                "dart", "divprune", "cdpruner")  # then unknown methods by name, EntropyPrune last
MME_METRICS = {"total": Metric("Total", ("total",)), "perception": Metric("Perception", ("perception",))}
MME_MAX = {"total": 2800.0, "perception": 2000.0}
OCRBENCH_MAX = 1000.0
REL_MODES = ("mean-ratio", "acc-ratio")
RADAR_FLOOR = 0.2  # the radar draws a normalised value v at radius 0.2 + 0.8 v
_QUALIFIERS = ("layer", "states", "variant")


class ComparisonError(ValueError):
    """Records that cannot make one table (disagreeing, duplicated, none); the message is one line."""


@dataclass
class Cell:
    value: float
    record: Record | None = None  # None for a published number
    flags: list[str] = field(default_factory=list)  # what disagrees (--allow-mixed)
    mismatch: str | None = None  # a published MME of the other convention: shown, not averaged, not ranked


@dataclass
class Row:
    origin: str  # "ours" or "published"
    method: str | None  # None: the unpruned model
    label: str
    budget: float | None  # None: the upper bound
    cells: dict[str, Cell] = field(default_factory=dict)
    source: str | None = None  # published.SOURCES key
    fields: dict[str, Any] = field(default_factory=dict)  # layer, states, variant of our runs
    note: str | None = None
    acc: float | None = None
    rel: float | None = None
    marks: dict[str, str] = field(default_factory=dict)  # column -> "best" | "second"


@dataclass
class Group:
    budget: float | None
    title: str
    title_tex: str
    rows: list[Row]


@dataclass
class Comparison:
    benchmarks: list[str]
    metrics: dict[str, Metric]
    groups: list[Group]
    mme: str
    rel_mode: str
    visual_tokens: int
    model: str | None
    footnotes: list[str]  # numbered: the flagged records
    sources: list[str]  # published source tags shown
    notes: list[str]
    summary: list[str]  # the paper's stated averages for the budgets shown
    numbers: dict[str, int] = field(default_factory=dict)  # flagged record path -> its footnote number
    rank_published: bool = False


# ---------------------------------------------------------------------------------------------- numbers


def percent(bench: str, value: float, mme: str = "total") -> float:
    """The score on a 0-100 scale, as it enters Acc.: MME over its maximum, OCRBench out of 1000 over 10."""
    if bench == "mme":
        return value / MME_MAX[mme] * 100.0
    if bench == "ocrbench":
        return value / OCRBENCH_MAX * 100.0
    return value


def decimals(bench: str, mme: str = "total") -> int:
    if bench == "ocrbench" or (bench == "mme" and mme == "total"):
        return 0  # 1862, 297: as the papers print them
    return 1


def fmt_value(bench: str, value: float, mme: str = "total") -> str:
    return f"{value:.{decimals(bench, mme)}f}"


def average_accuracy(scores: dict[str, float], benchmarks: list[str], mme: str = "total") -> float | None:
    """Acc.: the mean of the benchmarks' scores in %; None when one of ``benchmarks`` is missing."""
    if not benchmarks or any(b not in scores for b in benchmarks):
        return None
    return sum(percent(b, scores[b], mme) for b in benchmarks) / len(benchmarks)


def relative(scores: dict[str, float], upper: dict[str, float], benchmarks: list[str], mode: str = "mean-ratio",
             mme: str = "total") -> float | None:
    """Rel. in %: the mean of score / upper over ``benchmarks`` (mode "mean-ratio"), or Acc. / Acc.(upper)
    ("acc-ratio"); None when a score or the upper bound's is missing (or zero)."""
    if mode == "acc-ratio":
        acc, ref = average_accuracy(scores, benchmarks, mme), average_accuracy(upper, benchmarks, mme)
        return None if acc is None or not ref else acc / ref * 100.0
    if not benchmarks or any(b not in scores or not upper.get(b) for b in benchmarks):
        return None
    return sum(scores[b] / upper[b] for b in benchmarks) / len(benchmarks) * 100.0


def rank_marks(values: dict[Any, float], places: int) -> dict[Any, str]:
    """``{key: "best" | "second"}``: dense ranking of the values as displayed with ``places`` decimals.

    Every key whose displayed value equals the highest gets "best", every key at the next lower displayed
    value "second"; fewer than two values get no marks.
    """
    if len(values) < 2:
        return {}
    shown = {k: round(v, places) for k, v in values.items()}
    distinct = sorted(set(shown.values()), reverse=True)
    marks = {k: "best" for k, v in shown.items() if v == distinct[0]}
    if len(distinct) > 1:
        marks.update({k: "second" for k, v in shown.items() if v == distinct[1]})
    return marks


# ---------------------------------------------------------------------------------------------- records


def _rel(path: str) -> str:
    return os.path.relpath(path)


def record_budget(data: dict) -> float | None:
    """A pruned run's group: the average-token budget as asked, else the run's resolved average."""
    budget = data.get("budget")
    value = None
    if isinstance(budget, dict) and isinstance(budget.get("avg_tokens"), (int, float)):
        value = budget["avg_tokens"]
    elif isinstance(data.get("avg_tokens"), (int, float)):
        value = data["avg_tokens"]
    elif isinstance(data.get("keep"), (int, float)):
        value = data["keep"]
    return None if value is None or isinstance(value, bool) else round(float(value), 1)


def _scorer(data: dict) -> str | None:
    s = data.get("scorer")
    if isinstance(s, dict):
        return f"{s.get('module')}@{s.get('sha256')}"
    return None if s is None else str(s)


def _short(value: Any) -> str:
    if isinstance(value, str) and re.fullmatch(r"[0-9a-f]{40}", value):
        return value[:10]
    return repr(value) if value is None else str(value)


def _mode(values: list[tuple[Any, Record]]) -> Any:
    counts = Counter(v for v, _ in values)
    top = max(counts.values())
    return next(v for v, _ in values if counts[v] == top)  # ties: the first record's (sorted by path)


def check_records(records: list[Record]) -> tuple[dict[str, list[str]], list[str]]:
    """What is wrong with each record for one table: ``({path: [reason, ...]}, [one-line messages])``.

    Checkpoint and commit: the value most records share is the table's; scorer: per benchmark; complete:
    ``answers == questions``, both recorded.
    """
    flags: dict[str, list[str]] = {}
    messages: list[str] = []

    def disagree(field_name: str, values: list[tuple[Any, Record]], what: str) -> None:
        if len({v for v, _ in values}) < 2:
            return
        ref = _mode(values)
        ref_rec = next(r for v, r in values if v == ref)
        odd = [(v, r) for v, r in values if v != ref]
        for v, r in odd:
            flags.setdefault(r.path, []).append(f"{what} {_short(v)} (the table's: {_short(ref)})")
        v, r = odd[0]
        more = f" (and {len(odd) - 1} more)" if len(odd) > 1 else ""
        messages.append(f"records disagree on {field_name}: {_rel(r.path)} has {_short(v)} where "
                        f"{_rel(ref_rec.path)} has {_short(ref)}{more}")

    disagree("model", [(r.data.get("model"), r) for r in records], "checkpoint")
    disagree("git_commit", [(r.data.get("git_commit"), r) for r in records], "commit")
    by_bench: dict[str, list[tuple[Any, Record]]] = {}
    for r in records:
        by_bench.setdefault(r.benchmark, []).append((_scorer(r.data), r))
    for values in by_bench.values():
        disagree("scorer", values, "scorer")
    for r in records:
        answers, questions = r.data.get("answers"), r.data.get("questions")
        if not isinstance(answers, int) or not isinstance(questions, int) or answers != questions:
            flags.setdefault(r.path, []).append(f"incomplete ({answers} answers to {questions} questions)")
            messages.append(f"{_rel(r.path)} is incomplete: answers {answers} but questions {questions}")
    return flags, messages


def _method_key(method: str | None) -> tuple:
    if method is None:
        return (-1, "")
    if method == "entropy":
        return (len(METHOD_ORDER) + 1, method)
    if method in METHOD_ORDER:
        return (METHOD_ORDER.index(method), method)
    return (len(METHOD_ORDER), method)


def _sort_value(v: Any) -> tuple:
    return (0, v, "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0, str(v))


def method_name(method: str | None) -> str:
    return METHOD_NAMES.get(method, method) if method else "unpruned"


def _matches_published_model(model: str | None) -> bool:
    norm = re.sub(r"[^a-z0-9]", "", str(model or "").lower())
    return "llavav157b" in norm


def _tokens(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def build_comparison(records: list[Record], mme: str = "total", rel_mode: str = "mean-ratio",
                     published: bool = False, published_force: bool = False, rank_published: bool = False,
                     allow_mixed: bool = False) -> Comparison:
    if mme not in MME_METRICS:
        raise ComparisonError(f"--mme {mme!r}: choose total or perception")
    if rel_mode not in REL_MODES:
        raise ComparisonError(f"--rel {rel_mode!r}: choose {' or '.join(REL_MODES)}")
    if not records:
        raise ComparisonError("no run records to compare (results/<benchmark>/<run>.json)")
    records = sorted(records, key=lambda r: r.path)

    # Columns: each benchmark's headline metric (MME: the chosen convention).
    by_bench: dict[str, list[Record]] = {}
    for r in records:
        by_bench.setdefault(r.benchmark, []).append(r)
    metrics: dict[str, Metric] = {}
    for bench, recs in by_bench.items():
        if bench == "mme":
            metrics[bench] = MME_METRICS[mme]
        else:
            found = headline_metrics(bench, recs)
            if found:
                metrics[bench] = found[0]
            else:
                warn(f"{bench}: no record has a headline score; left out of the comparison")
    placed: list[tuple[Record, float]] = []
    for r in records:
        metric = metrics.get(r.benchmark)
        if metric is None:
            continue
        value = next((float(r.scores[k]) for k in metric.keys if k in r.scores), None)
        if value is None:
            warn(f"{_rel(r.path)}: no {MD_NAMES.get(r.benchmark, r.benchmark)} {metric.label} score; "
                 "its cell stays empty")
            continue
        placed.append((r, value))
    used = {r.benchmark for r, _ in placed}
    benchmarks = [b for b in BENCH_ORDER if b in used] + sorted(used - set(BENCH_ORDER))
    if not benchmarks:
        raise ComparisonError("no run record has a headline score to compare")

    # The records of the table must agree; flags for --allow-mixed.
    flags, messages = check_records([r for r, _ in placed])
    if messages and not allow_mixed:
        extra = f" ({len(messages) - 1} more problems)" if len(messages) > 1 else ""
        raise ComparisonError(f"{messages[0]}{extra}; pass --allow-mixed to include them, flagged")
    model = _mode([(r.data.get("model"), r) for r, _ in placed])
    visual = [(r.data.get("visual_tokens"), r) for r, _ in placed if isinstance(r.data.get("visual_tokens"), int)]
    visual_tokens = _mode(visual) if visual else 576

    # Rows of our runs; one record per cell.
    varying: dict[str, list[str]] = {}
    for f in _QUALIFIERS:
        per_method: dict[str, set] = {}
        for r, _ in placed:
            if r.method is not None:
                per_method.setdefault(r.method, set()).add(_short(r.data.get(f)))
        for m, vals in per_method.items():
            if len(vals) > 1:
                varying.setdefault(m, []).append(f)
    rows: dict[tuple, Row] = {}
    owner: dict[tuple, Record] = {}
    for r, value in placed:
        if r.method is None:
            budget, ident = None, ("upper",)
        else:
            budget = record_budget(r.data)
            if budget is None:
                warn(f"{_rel(r.path)}: no budget, avg_tokens or keep; left out of the comparison")
                continue
            ident = (r.method, *(_short(r.data.get(f)) for f in _QUALIFIERS))
        key = (ident, budget)
        cell_key = (key, r.benchmark)
        if cell_key in owner:
            what = "the unpruned model" if r.method is None else \
                f"{method_name(r.method)} at {_tokens(budget)} tokens"
            raise ComparisonError(f"{_rel(owner[cell_key].path)} and {_rel(r.path)} are both {what} on "
                                  f"{MD_NAMES.get(r.benchmark, r.benchmark)}; keep one (or choose with --match)")
        owner[cell_key] = r
        row = rows.get(key)
        if row is None:
            fields = {f: r.data.get(f) for f in _QUALIFIERS}
            if r.method is None:
                label = str(r.data.get("model") or "unpruned")
            else:
                quals = [f"K={fields[f]}" if f == "layer" else f"{f}={fields[f]}"
                         for f in varying.get(r.method, [])]
                label = method_name(r.method) + (f" ({', '.join(quals)})" if quals else "")
            row = rows[key] = Row("ours", r.method, label, budget, fields=fields)
        row.cells[r.benchmark] = Cell(value, r, list(flags.get(r.path, [])))

    groups_rows: dict[float | None, list[Row]] = {}
    for row in rows.values():
        groups_rows.setdefault(row.budget, []).append(row)
    for grows in groups_rows.values():
        grows.sort(key=lambda row: (_method_key(row.method), *(_sort_value(row.fields.get(f)) for f in _QUALIFIERS)))

    # Published rows for the budgets shown.
    sources: list[str] = []
    notes: list[str] = []
    summary: list[str] = []
    if published:
        if not (published_force or _matches_published_model(model)):
            warn(f"published numbers are for {P.MODEL}, the records are of {model!r}: not shown "
                 "(--published-force shows them anyway)")
        else:
            budgets = {b for b in groups_rows if b is not None}
            prows: list[Row] = []
            for p in P.ROWS:
                budget = None if p.method is None else float(p.tokens)
                if budget is not None and budget not in budgets:
                    continue
                cells = {}
                for b in benchmarks:
                    if b in p.scores:
                        conv = P.SOURCES[p.source]["mme"]
                        cells[b] = Cell(float(p.scores[b]), mismatch=conv if b == "mme" and conv != mme else None)
                if not cells:
                    continue
                label = (P.MODEL if p.method is None else method_name(p.method))
                prows.append(Row("published", p.method, label, budget, cells, source=p.source, note=p.note))
                if p.source not in sources:
                    sources.append(p.source)
            for row in sorted(prows, key=lambda row: (_method_key(row.method), list(P.SOURCES).index(row.source))):
                groups_rows.setdefault(row.budget, []).append(row)
                if row.note:
                    notes.append(f"{row.label} at {_tokens(row.budget)} tokens ({row.source}): {row.note}.")
                if any(c.mismatch for c in row.cells.values()):
                    conv = P.SOURCES[row.source]["mme"]
                    note = (f"{row.source} reports MME as {_conv_name(conv)} (marked {_conv_mark(conv)}): shown, "
                            f"not averaged, not ranked; --mme {conv} compares it.")
                    if note not in notes:
                        notes.append(note)
            for s in P.SUMMARY:
                if float(s["tokens"]) in budgets:
                    what = f"Acc. {s['acc']}" if "acc" in s else f"Rel. {s['rel']}%"
                    summary.append(f"{method_name(s['method'])} at {s['tokens']} tokens: {what} over the paper's eight "
                                   f"Table 1 benchmarks ({s['where']}).")

    # Acc., Rel., marks.
    uppers: dict[tuple, Row] = {}
    for row in groups_rows.get(None, []):
        uppers[(row.origin, row.source)] = row
    upper_scores: dict[tuple, dict[str, float]] = {k: _scores(v) for k, v in uppers.items()}
    for p in P.ROWS:  # a published source's own upper bound, even where none of its cells is shown
        if p.method is None and ("published", p.source) not in upper_scores:
            upper_scores[("published", p.source)] = {b: float(v) for b, v in p.scores.items()}
    missing = False
    for grows in groups_rows.values():
        for row in grows:
            scores = _scores(row)
            row.acc = average_accuracy(scores, benchmarks, mme)
            ref = upper_scores.get((row.origin, row.source))
            row.rel = relative(scores, ref, benchmarks, rel_mode, mme) if ref is not None else None
            if row.acc is None and len(scores) < len(benchmarks):
                missing = True
    if missing:
        notes.append("Acc. and Rel. are left empty for a row without a score on every benchmark of the table.")

    groups = []
    order = sorted(groups_rows, key=lambda b: math.inf if b is None else b, reverse=True)
    for budget in order:
        grows = groups_rows[budget]
        if budget is None:
            title = f"Upper bound, {visual_tokens} tokens (100%)"
            tex = f"Upper Bound, {visual_tokens} Tokens (100\\%)"
        else:
            cut = (1 - budget / visual_tokens) * 100
            title = f"Retain {_tokens(budget)} tokens (↓{cut:.1f}%)"
            tex = f"Retain {_tokens(budget)} Tokens ($\\downarrow${cut:.1f}\\%)"
            ranked = [r for r in grows if r.origin == "ours" or rank_published]
            for col in [*benchmarks, "acc", "rel"]:
                values = {}
                for i, r in enumerate(ranked):
                    if col == "acc":
                        v = r.acc
                    elif col == "rel":
                        v = r.rel
                    else:
                        c = r.cells.get(col)
                        v = None if c is None or c.mismatch else c.value
                    if v is not None:
                        values[i] = v
                places = 1 if col in ("acc", "rel") else decimals(col, mme)
                for i, mark in rank_marks(values, places).items():
                    ranked[i].marks[col] = mark
        groups.append(Group(budget, title, tex, grows))

    # Footnotes of flagged records, numbered in table order.
    footnotes: list[str] = []
    numbers: dict[str, int] = {}
    for g in groups:
        for row in g.rows:
            for b in benchmarks:
                c = row.cells.get(b)
                if c is not None and c.flags and c.record.path not in numbers:
                    numbers[c.record.path] = len(footnotes) + 1
                    footnotes.append(f"{_rel(c.record.path)}: {'; '.join(c.flags)}")
    dirty = sorted(_rel(r.path) for r, _ in placed if r.data.get("git_dirty"))
    if dirty:
        notes.append(f"Written from a checkout with uncommitted changes: {', '.join(dirty)}.")
    return Comparison(benchmarks, metrics, groups, mme, rel_mode, visual_tokens, model, footnotes, sources, notes,
                      summary, numbers, rank_published)


def _scores(row: Row) -> dict[str, float]:
    return {b: c.value for b, c in row.cells.items() if c.mismatch is None}


def _conv_name(conv: str) -> str:
    return "perception only" if conv == "perception" else "perception + cognition"


def _conv_mark(conv: str) -> str:
    return "(P)" if conv == "perception" else "(P+C)"


# ---------------------------------------------------------------------------------------------- render


def _cell_text(comp: Comparison, row: Row, col: str, style: str) -> str:
    """One cell as text in ``style`` ("md" or "tex"), with its mark and footnote."""
    if col == "acc":
        text = "" if row.acc is None else f"{row.acc:.1f}"
    elif col == "rel":
        text = "" if row.rel is None else (f"{row.rel:.1f}%" if style == "md" else f"{row.rel:.1f}\\%")
    else:
        c = row.cells.get(col)
        if c is None:
            return ""
        text = fmt_value(col, c.value, c.mismatch or comp.mme)
        if c.mismatch:
            text += f" {_conv_mark(c.mismatch)}"
    if not text:
        return ""
    mark = row.marks.get(col)
    if style == "md":
        text = f"**{text}**" if mark == "best" else f"<u>{text}</u>" if mark == "second" else text
    else:
        text = f"\\textbf{{{text}}}" if mark == "best" else f"\\underline{{{text}}}" if mark == "second" else text
    c = row.cells.get(col) if col not in ("acc", "rel") else None
    if c is not None and c.flags:
        n = comp.numbers[c.record.path]
        text += f"<sup>{n}</sup>" if style == "md" else f"$^{{{n}}}$"
    return text


def _label(row: Row, style: str) -> str:
    if row.origin != "published":
        return row.label if style == "md" else _tex_escape(row.label)
    if style == "md":
        return f"{row.label} †{row.source}"
    return f"{_tex_escape(row.label)}$^\\dagger$ ({_tex_escape(row.source)})"


def _tex_escape(text: str) -> str:
    return re.sub(r"([%&#_$])", r"\\\1", text)


def _caption(comp: Comparison) -> list[str]:
    n = len(comp.benchmarks)
    mme = "MME total / 2800 × 100" if comp.mme == "total" else "MME perception / 2000 × 100"
    rel = ("mean over the benchmarks of score / upper bound × 100" if comp.rel_mode == "mean-ratio"
           else "Acc. / Acc. of the upper bound × 100")
    return [f"Acc.: mean over the {n} benchmarks of the score in % ({mme}; OCRBench / 10).", f"Rel.: {rel}.",
            "Best per column and budget in bold, second underlined ("
            + ("our runs and the published ones)." if comp.rank_published else "our runs only).")
            + ((" † published." if comp.rank_published else " † published, not ranked.") if comp.sources else "")]


def render_markdown(comp: Comparison) -> str:
    cols = comp.benchmarks
    heads = [MD_NAMES.get(b, b) for b in cols]
    out = ["# Comparison by budget", ""]
    caption = _caption(comp)
    out += [f"Checkpoint: {comp.model}. {caption[0]}", *caption[1:], ""]
    out.append("| Method | " + " | ".join(heads) + " | Acc. | Rel. |")
    out.append("| --- |" + " ---: |" * (len(cols) + 2))
    empty = " |" * (len(cols) + 2)
    for g in comp.groups:
        out.append(f"| *{g.title}* |{empty}")
        for row in g.rows:
            cells = [_cell_text(comp, row, c, "md") for c in [*cols, "acc", "rel"]]
            out.append(f"| {_label(row, 'md')} | " + " | ".join(cells) + " |")
    for tag in comp.sources:
        out += ["", f"†{tag}: {P.source_line(tag)}."]
    for i, text in enumerate(comp.footnotes, 1):
        out += ["", f"<sup>{i}</sup> {text}."]
    for note in comp.notes:
        out += ["", note]
    if comp.summary:
        out += ["", "Published averages (over the paper's eight benchmarks, not the columns above):", ""]
        out += [f"- {s}" for s in comp.summary]
    return "\n".join(out).rstrip() + "\n"


def render_latex(comp: Comparison) -> str:
    cols = comp.benchmarks
    width = len(cols) + 3
    heads = [TEX_NAMES.get(b, MD_NAMES.get(b, _tex_escape(b))) for b in cols]
    out = [f"% entropyprune report --table comparison; checkpoint {_tex_escape(str(comp.model))}; needs booktabs",
           *[f"% {line}" for line in _caption(comp)],
           "\\begin{tabular}{l" + "c" * (len(cols) + 2) + "}", "\\toprule",
           "Method & " + " & ".join(heads) + " & Acc. & Rel. \\\\"]
    for g in comp.groups:
        out += ["\\midrule", f"\\multicolumn{{{width}}}{{c}}{{\\textit{{{g.title_tex}}}}} \\\\", "\\midrule"]
        for row in g.rows:
            cells = [_cell_text(comp, row, c, "tex") for c in [*cols, "acc", "rel"]]
            out.append(f"{_label(row, 'tex')} & " + " & ".join(cells) + " \\\\")
    out += ["\\bottomrule", "\\end{tabular}"]
    for tag in comp.sources:
        out.append(f"% \\dagger {tag}: {P.source_line(tag)}")
    for i, text in enumerate(comp.footnotes, 1):
        out.append(f"% {i}: {text}")
    return "\n".join(out) + "\n"


def render_csv(comp: Comparison) -> str:
    cols = comp.benchmarks
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["budget", "method", "label", "origin", "source", "layer", "states", "variant",
                *[MD_NAMES.get(b, b) for b in cols], "acc", "rel", "flags"])

    def num(v: float | None) -> str:
        return "" if v is None else repr(round(v, 4))

    for g in comp.groups:
        for row in g.rows:
            flags = []
            for b in cols:
                c = row.cells.get(b)
                if c is not None and c.flags:
                    flags.append(f"{MD_NAMES.get(b, b)}: {'; '.join(c.flags)}")
                if c is not None and c.mismatch:
                    flags.append(f"MME is {_conv_name(c.mismatch)}")
            if row.note:
                flags.append(row.note)
            w.writerow(["upper" if row.budget is None else _tokens(row.budget), row.method or "", row.label,
                        row.origin, row.source or "", *(("" if row.fields.get(f) is None else row.fields[f])
                                                        for f in _QUALIFIERS),
                        *[num(row.cells[b].value) if b in row.cells else "" for b in cols],
                        num(row.acc), num(row.rel), " | ".join(flags)])
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------- figures


def radar_values(rows: dict[str, dict[str, float]], benchmarks: list[str]) -> tuple[list[str], dict[str, list[float]]]:
    """Figure 1(b)'s min-max normalisation: per benchmark, (score - min) / (max - min) over the rows.

    ``rows``: label -> benchmark -> score. Benchmarks that some row lacks are left out; a benchmark where
    every row scores the same gives 1.0 to all. Returns (benchmarks used, label -> values in that order).
    """
    used = [b for b in benchmarks if rows and all(b in s for s in rows.values())]
    out: dict[str, list[float]] = {label: [] for label in rows}
    for b in used:
        lo = min(s[b] for s in rows.values())
        hi = max(s[b] for s in rows.values())
        for label, s in rows.items():
            out[label].append(1.0 if hi == lo else (s[b] - lo) / (hi - lo))
    return used, out


def radar_rows(comp: Comparison, budget: float | None = None) -> tuple[float | None, dict[str, dict[str, float]]]:
    """Our pruned rows at ``budget`` (default: the largest pruned budget) as label -> scores."""
    pruned = [g for g in comp.groups if g.budget is not None]
    if not pruned:
        return None, {}
    group = pruned[0] if budget is None else next((g for g in pruned if g.budget == float(budget)), None)
    if group is None:
        raise ComparisonError(f"--radar-budget {budget:g}: no runs at that budget (budgets: "
                              f"{', '.join(_tokens(g.budget) for g in pruned)})")
    return group.budget, {r.label: _scores(r) for r in group.rows if r.origin == "ours"}


def plot_radar(comp: Comparison, path: str, budget: float | None = None) -> bool:
    from entropyprune.figures import polar_figure, save

    at, rows = radar_rows(comp, budget)
    used, values = radar_values(rows, comp.benchmarks)
    if len(rows) < 2 or len(used) < 3:
        warn("radar chart: needs two methods or more at one budget with three benchmarks or more in common; "
             "not drawn")
        return False
    fig, ax = polar_figure()
    angles = [2 * math.pi * i / len(used) for i in range(len(used))]
    for label, vals in values.items():
        radius = [RADAR_FLOOR + (1 - RADAR_FLOOR) * v for v in vals]  # the lowest score on a ring, not a point
        ax.plot([*angles, angles[0]], [*radius, radius[0]], linewidth=1.5, marker="o", markersize=3, label=label)
        ax.fill([*angles, angles[0]], [*radius, radius[0]], alpha=0.08)
    ax.set_xticks(angles)
    ax.set_xticklabels([MD_NAMES.get(b, b) for b in used])
    ax.set_ylim(0, 1.05)
    ax.set_yticks([RADAR_FLOOR, 1.0])
    ax.set_yticklabels([])
    ax.set_title(f"{_tokens(at)} tokens: min-max normalised scores", fontsize=10)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.06), ncol=min(len(values), 4))
    save(fig, path)
    return True


def plot_acc_tokens(comp: Comparison, path: str) -> bool:
    from entropyprune.figures import panels_figure, save

    lines: dict[str, list[tuple[float, float]]] = {}
    upper = None
    for g in comp.groups:
        for row in g.rows:
            if row.origin != "ours" or row.acc is None:
                continue
            if g.budget is None:
                upper = row
            else:
                lines.setdefault(row.label, []).append((g.budget, row.acc))
    if not lines:
        warn("accuracy against tokens: no run has Acc. (a score on every benchmark of the table); not drawn")
        return False
    fig, axes = panels_figure(1)
    ax = axes[0]
    for label, pts in lines.items():
        pts.sort()
        ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", linewidth=1.5, label=label)
    if upper is not None:
        ax.axhline(upper.acc, color="0.4", linestyle="--", linewidth=1, label=f"{upper.label} ({comp.visual_tokens})")
    ax.set_xlabel("average visual tokens")
    ax.set_ylabel("Acc. (%)")
    ax.set_title(f"Acc. over {len(comp.benchmarks)} benchmarks", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save(fig, path)
    return True


# ---------------------------------------------------------------------------------------------- files


def write_comparison(comp: Comparison, out_dir: str, radar_budget: float | None = None) -> dict[str, str | None]:
    """comparison.md / .tex / .csv and the two figures into ``out_dir``; the paths written."""
    from entropyprune.files import atomic_file

    if radar_budget is not None:
        radar_rows(comp, radar_budget)  # a budget without runs is refused before anything is written
    os.makedirs(out_dir, exist_ok=True)
    paths: dict[str, str | None] = {}
    for ext, text in (("md", render_markdown(comp)), ("tex", render_latex(comp)), ("csv", render_csv(comp))):
        path = os.path.join(out_dir, f"comparison.{ext}")
        with atomic_file(path) as f:
            f.write(text)
        paths[ext] = path
    radar = os.path.join(out_dir, "comparison_radar.png")
    paths["radar"] = radar if plot_radar(comp, radar, radar_budget) else None
    acc = os.path.join(out_dir, "comparison_acc_tokens.png")
    paths["acc_tokens"] = acc if plot_acc_tokens(comp, acc) else None
    return paths
