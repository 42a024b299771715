"""Published LLaVA-1.5-7B numbers that the comparison report can show next to our runs.

Every row names its source (paper and table) and the MME convention of that source: ``"total"``
(perception + cognition, out of 2800; LLaVA-1.5-7B scores 1862) or ``"perception"`` (out of 2000; about
1506-1511). Numbers are as printed in the source. Benchmarks use the report's keys (``mmbench``,
``mmbenchcn``, ``mme``, ``sqa``, ``textvqa``, ``mmvet``, ``gqa``, ``pope``, ...); ``method`` uses this
package's method names, ``None`` for the unpruned model; ``tokens`` is the budget the source reports
(576 = no pruning).

The EntropyPrune paper's own Table 1 cells are not reproduced here: only numbers the paper states in
Table 5 and in its text are, so the EntropyPrune rows are partial. The peers' rows come from their own
papers' tables, measured by them under their own protocols; they are context, not targets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MODEL = "llava-v1.5-7b"  # the only checkpoint these numbers were published for

SOURCES: dict[str, dict[str, str | None]] = {
    "EP-T5": {"paper": "EntropyPrune (Wang et al., arXiv 2602.17196)", "table": "Table 5 (Score column)",
              "mme": "total"},
    "EP-4.7": {"paper": "EntropyPrune (Wang et al., arXiv 2602.17196)",
               "table": "Section 4.7.1 (Figure 5, pruning at layer 2)", "mme": None},
    "DART-T1": {"paper": "DART (Wen et al., arXiv 2502.11494)", "table": "Table 1", "mme": "total"},
    "CDPruner-P": {"paper": "CDPruner (Zhang et al., NeurIPS 2025)",
                   "table": "LLaVA-1.5-7B results table of the project page (github.com/Theia-4869/CDPruner)",
                   "mme": "perception"},
}


@dataclass(frozen=True)
class PublishedRow:
    source: str  # a key of SOURCES
    method: str | None  # None: the unpruned model
    tokens: int
    scores: dict[str, float] = field(default_factory=dict)
    note: str | None = None


def _rows(source: str, columns: tuple[str, ...], table: list[tuple]) -> list[PublishedRow]:
    out = []
    for entry in table:
        tokens, method, *values = entry
        note = None
        if values and isinstance(values[-1], str):
            note = values.pop()
        out.append(PublishedRow(source, method, tokens, dict(zip(columns, values, strict=True)), note))
    return out


_DART = ("gqa", "mmbench", "mme", "pope", "sqa", "textvqa")
_CDPRUNER = ("gqa", "mmbench", "mme", "pope", "sqa", "textvqa", "mmvet")

ROWS: list[PublishedRow] = [
    *_rows("EP-T5", ("mme",), [
        (576, None, 1862),
        (192, "fastv", 1796), (192, "cdpruner", 1786), (192, "entropy", 1844),
        (128, "fastv", 1735), (128, "cdpruner", 1775), (128, "entropy", 1780),
    ]),
    *_rows("EP-4.7", ("textvqa", "mmbench"), [(192, "entropy", 57.6, 64.6)]),
    *_rows("DART-T1", _DART, [
        (576, None, 61.9, 64.7, 1862, 85.9, 69.5, 58.2),
        (192, "fastv", 52.7, 61.2, 1612, 64.8, 67.3, 52.5),
        (192, "prumerge", 54.3, 59.6, 1632, 71.3, 67.9, 54.3),
        (192, "sparsevlm", 57.6, 62.5, 1721, 83.6, 69.1, 56.1),
        (192, "pdrop", 57.1, 63.2, 1766, 82.3, 68.8, 56.1),
        (192, "dart", 60.0, 63.6, 1856, 82.8, 69.8, 57.4),
        (128, "fastv", 49.6, 56.1, 1490, 59.6, 60.2, 50.6),
        (128, "prumerge", 53.3, 58.1, 1554, 67.2, 67.1, 54.3),
        (128, "sparsevlm", 56.0, 60.0, 1696, 80.5, 67.1, 54.9),
        (128, "pdrop", 56.0, 61.1, 1644, 82.3, 68.3, 55.1),
        (128, "dart", 58.7, 63.2, 1840, 80.1, 69.1, 56.4,
         "other papers cite this row as GQA 57.9 and MME 1845 (another arXiv revision)"),
        (64, "fastv", 46.1, 48.0, 1256, 48.0, 51.1, 47.8),
        (64, "prumerge", 51.9, 55.3, 1549, 65.3, 68.1, 54.0),
        (64, "sparsevlm", 52.7, 56.2, 1505, 75.1, 62.2, 51.8),
        (64, "pdrop", 41.9, 33.3, 1092, 55.9, 68.6, 45.9),
        (64, "dart", 55.9, 60.6, 1765, 73.9, 69.8, 54.4),
    ]),
    *_rows("CDPruner-P", _CDPRUNER, [
        (576, None, 61.9, 64.7, 1506.5, 85.9, 69.5, 58.2, 31.3),
        (128, "fastv", 54.0, 63.0, 1368.9, 68.2, 69.2, 56.4, 27.0),
        (128, "pdrop", 57.1, 62.3, 1444.1, 77.5, 70.1, 56.7, 27.6),
        (128, "sparsevlm", 57.3, 62.6, 1399.3, 83.1, 69.0, 56.3, 29.7),
        (128, "prumerge_plus", 58.2, 61.8, 1408.1, 83.1, 69.1, 54.0, 30.4),
        (128, "dart", 57.9, 60.7, 1408.7, 80.4, 69.1, 56.3, 30.9),
        (128, "divprune", 59.4, 61.5, 1405.1, 87.0, 68.6, 55.9, 30.6),
        (128, "cdpruner", 59.9, 63.1, 1431.4, 87.7, 69.0, 56.2, 32.8),
        (64, "fastv", 46.0, 50.1, 973.5, 35.5, 70.1, 51.6, 18.9),
        (64, "pdrop", 46.1, 48.0, 982.2, 40.8, 68.8, 49.2, 17.7),
        (64, "sparsevlm", 52.0, 58.3, 1190.4, 69.7, 69.2, 52.1, 24.4),
        (64, "prumerge_plus", 55.4, 59.6, 1316.8, 75.7, 69.5, 52.0, 28.0),
        (64, "dart", 54.7, 59.5, 1365.1, 73.8, 69.3, 54.7, 26.5),
        (64, "divprune", 57.5, 60.1, 1334.7, 85.5, 68.0, 54.5, 28.1),
        (64, "cdpruner", 58.6, 61.1, 1415.1, 87.5, 68.1, 55.3, 30.5),
    ]),
]

# Averages the EntropyPrune paper states in its text, over its Table 1 benchmarks (eight); they are shown
# under the table, never in its Acc./Rel. cells, which are computed over the table's own columns.
SUMMARY: list[dict] = [
    {"tokens": 192, "method": "entropy", "rel": 98.1, "where": "arXiv 2602.17196, Section 4.2 (Table 1)"},
    {"tokens": 128, "method": "entropy", "rel": 96.0, "where": "arXiv 2602.17196, Section 4.2 (Table 1)"},
    {"tokens": 192, "method": "entropy", "acc": 53.6, "where": "arXiv 2602.17196, Appendix C (Table 7, query and "
                                                               "key states alike)"},
    {"tokens": 192, "method": "dart", "acc": 53.1, "where": "arXiv 2602.17196, Appendix C (Table 7)"},
    {"tokens": 192, "method": "cdpruner", "acc": 53.0, "where": "arXiv 2602.17196, Appendix C (Table 7)"},
    {"tokens": 128, "method": "entropy", "acc": 52.7, "where": "arXiv 2602.17196, Appendix C (Table 7, key states)"},
    {"tokens": 128, "method": "dart", "acc": 52.0, "where": "arXiv 2602.17196, Appendix C (Table 7)"},
    {"tokens": 128, "method": "cdpruner", "acc": 52.4, "where": "arXiv 2602.17196, Appendix C (Table 7)"},
]


def source_line(tag: str) -> str:
    src = SOURCES[tag]
    mme = {"total": "; MME = perception + cognition", "perception": "; MME = perception only", None: ""}[src["mme"]]
    return f"{src['paper']}, {src['table']}{mme}"
