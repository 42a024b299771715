"""`entropyprune report --table comparison`: the paper's Table 1 layout from run records.

The records are written by llava.eval.record itself (answers, sidecar and scorer summary built here), and
the expected tables below are written out by hand, numbers computed by hand:

  Acc. = mean of (MMB, MME total / 2800 * 100, TextVQA);  Rel. = mean of score / upper bound, in %
  upper bound (64.0, 1862, 58.0):  Acc. (64 + 66.5 + 58) / 3 = 62.83;  Rel. 100
  192 FastV   (61.0, 1700, 55.0):  Acc. (61 + 60.714 + 55) / 3 = 58.90;  Rel. (.953125 + .912997 + .948276) / 3 = 93.81
  192 DART    (63.0, 1800, 57.0):  Acc. (63 + 64.286 + 57) / 3 = 61.43;  Rel. (.984375 + .966702 + .982759) / 3 = 97.79
  192 Entropy (63.0, 1850, 57.5):  Acc. (63 + 66.071 + 57.5) / 3 = 62.19; Rel. (.984375 + .993555 + .991379) / 3 = 98.98
  128 FastV   (58.0, 1600, 53.0):  Acc. (58 + 57.143 + 53) / 3 = 56.05;  Rel. (.90625 + .859291 + .913793) / 3 = 89.31
  128 Entropy (62.0, 1780, -):     no TextVQA, so no Acc. and no Rel.
"""

import csv
import io
import json

import pytest
from PIL import Image

from entropyprune import comparison as C
from entropyprune.report import load_records
from llava import cli
from llava.eval import record as R

MODEL = "llava-v1.5-7b"
V = 576

# benchmark -> headline score as the scorer's summary holds it
SUMMARY = {
    "mme": lambda total: {"perception": total - 300.0, "cognition": 300.0, "total": total},
    "mmbench": lambda v: {"circular_eval": v, "single_eval": v + 1},
    "textvqa": lambda v: {"accuracy": v},
    "ocrbench": lambda v: {"overall": v},
}


def write_run(tmp_path, bench, run, score, method=None, avg=None, layer=2, model=MODEL, questions=2):
    """One run's answers, sidecar and scorer summary, then `python -m llava.eval.record` on them."""
    work = tmp_path / "work" / bench
    work.mkdir(parents=True, exist_ok=True)
    answers = work / f"{run}.jsonl"
    answers.write_text("".join(json.dumps({"question_id": i, "prompt": f"q{i}", "text": "Yes", "model_id": model})
                               + "\n" for i in range(questions)))
    prune = None if method is None else {"method": method, "layer": layer, "avg_tokens": avg}
    kept = V if method is None else round((32 * avg - layer * V) / (32 - layer))
    meta = {"settings": {"benchmark": "model_vqa_loader", "model_path": f"/ckpt/{model}", "prune": prune},
            "model_name": model, "questions": questions, "complete": True, "method": method,
            "layer": None if method is None else layer, "kept_tokens": kept,
            "avg_tokens_equivalent": V if method is None else float(avg), "num_layers": 32, "num_visual_tokens": V}
    (work / f"{run}.jsonl.meta.json").write_text(json.dumps(meta))
    summary = work / f"{run}_scores.json"
    summary.write_text(json.dumps(SUMMARY[bench](score)))
    R.main(["--benchmark", bench, "--run-name", run, "--answers", str(answers), "--scores-json", str(summary),
            "--results-dir", str(tmp_path / "results")])
    path = tmp_path / "results" / bench / f"{run}.json"
    _edit(path, git_dirty=False)  # whatever state this checkout is in (the report notes dirty ones)
    return path


RUNS = [  # (run, method, avg tokens, MMB, MME total, TextVQA)
    ("vanilla", None, None, 64.0, 1862.0, 58.0),
    ("fastv-192", "fastv", 192, 61.0, 1700.0, 55.0),
    ("dart-192", "dart", 192, 63.0, 1800.0, 57.0),
    ("entropy-192", "entropy", 192, 63.0, 1850.0, 57.5),
    ("fastv-128", "fastv", 128, 58.0, 1600.0, 53.0),
    ("entropy-128", "entropy", 128, 62.0, 1780.0, None),
]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cmp")
    for run, method, avg, mmb, mme, tvqa in RUNS:
        for bench, score in (("mmbench", mmb), ("mme", mme), ("textvqa", tvqa)):
            if score is not None:
                write_run(tmp, bench, run, score, method, avg)
    return tmp / "results"


def copy_results(results, tmp_path):
    import shutil

    dst = tmp_path / "results"
    shutil.copytree(results, dst)
    return dst


EXPECTED_MD = """\
# Comparison by budget

Checkpoint: llava-v1.5-7b. Acc.: mean over the 3 benchmarks of the score in % (MME total / 2800 × 100; OCRBench / 10).
Rel.: mean over the benchmarks of score / upper bound × 100.
Best per column and budget in bold, second underlined (our runs only).

| Method | MMB | MME | TextVQA | Acc. | Rel. |
| --- | ---: | ---: | ---: | ---: | ---: |
| *Upper bound, 576 tokens (100%)* | | | | | |
| llava-v1.5-7b | 64.0 | 1862 | 58.0 | 62.8 | 100.0% |
| *Retain 192 tokens (↓66.7%)* | | | | | |
| FastV | <u>61.0</u> | 1700 | 55.0 | 58.9 | 93.8% |
| DART | **63.0** | <u>1800</u> | <u>57.0</u> | <u>61.4</u> | <u>97.8%</u> |
| EntropyPrune | **63.0** | **1850** | **57.5** | **62.2** | **99.0%** |
| *Retain 128 tokens (↓77.8%)* | | | | | |
| FastV | <u>58.0</u> | <u>1600</u> | 53.0 | 56.0 | 89.3% |
| EntropyPrune | **62.0** | **1780** |  |  |  |

Acc. and Rel. are left empty for a row without a score on every benchmark of the table.
"""

EXPECTED_TEX = r"""% entropyprune report --table comparison; checkpoint llava-v1.5-7b; needs booktabs
% Acc.: mean over the 3 benchmarks of the score in % (MME total / 2800 × 100; OCRBench / 10).
% Rel.: mean over the benchmarks of score / upper bound × 100.
% Best per column and budget in bold, second underlined (our runs only).
\begin{tabular}{lccccc}
\toprule
Method & MMB & MME & VQA\textsuperscript{T} & Acc. & Rel. \\
\midrule
\multicolumn{6}{c}{\textit{Upper Bound, 576 Tokens (100\%)}} \\
\midrule
llava-v1.5-7b & 64.0 & 1862 & 58.0 & 62.8 & 100.0\% \\
\midrule
\multicolumn{6}{c}{\textit{Retain 192 Tokens ($\downarrow$66.7\%)}} \\
\midrule
FastV & \underline{61.0} & 1700 & 55.0 & 58.9 & 93.8\% \\
DART & \textbf{63.0} & \underline{1800} & \underline{57.0} & \underline{61.4} & \underline{97.8\%} \\
EntropyPrune & \textbf{63.0} & \textbf{1850} & \textbf{57.5} & \textbf{62.2} & \textbf{99.0\%} \\
\midrule
\multicolumn{6}{c}{\textit{Retain 128 Tokens ($\downarrow$77.8\%)}} \\
\midrule
FastV & \underline{58.0} & \underline{1600} & 53.0 & 56.0 & 89.3\% \\
EntropyPrune & \textbf{62.0} & \textbf{1780} &  &  &  \\
\bottomrule
\end{tabular}
"""

EXPECTED_CSV = """\
budget,method,label,origin,source,layer,states,variant,MMB,MME,TextVQA,acc,rel,flags
upper,,llava-v1.5-7b,ours,,,,,64.0,1862.0,58.0,62.8333,100.0,
192,fastv,FastV,ours,,2,,,61.0,1700.0,55.0,58.9048,93.8133,
192,dart,DART,ours,,2,,,63.0,1800.0,57.0,61.4286,97.7945,
192,entropy,EntropyPrune,ours,,2,,,63.0,1850.0,57.5,62.1905,98.977,
128,fastv,FastV,ours,,2,,,58.0,1600.0,53.0,56.0476,89.3111,
128,entropy,EntropyPrune,ours,,2,,,62.0,1780.0,,,,
"""


def test_comparison_markdown_latex_csv_exactly(results, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["report", str(results), "--table", "comparison", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert (out / "comparison.md").read_text() == EXPECTED_MD
    assert captured.out.strip() == EXPECTED_MD.strip()
    assert (out / "comparison.tex").read_text() == EXPECTED_TEX
    assert (out / "comparison.csv").read_text() == EXPECTED_CSV
    # Figures: valid PNGs; the radar at the largest pruned budget, the accuracy against tokens.
    for name in ("comparison_radar.png", "comparison_acc_tokens.png"):
        with Image.open(out / name) as img:
            img.verify()
            assert img.format == "PNG"
    assert "comparison_radar.png" in captured.err
    assert not (out / "report.md").exists()  # the layer table is the default view, not this one


def test_default_view_is_unchanged_and_all_writes_both(results, tmp_path):
    out = tmp_path / "out"
    assert cli.main(["report", str(results), "--out", str(out)]) == 0
    assert (out / "report.md").exists() and not (out / "comparison.md").exists()
    assert cli.main(["report", str(results), "--out", str(out), "--table", "all"]) == 0
    assert (out / "comparison.md").read_text() == EXPECTED_MD


def test_records_name_their_scorer(results):
    rec = json.loads((results / "mme" / "vanilla.json").read_text())
    assert rec["scorer"]["module"] == "llava.eval.eval_mme"
    assert rec["scorer"] == R.scorer_identity("mme")
    assert len(rec["scorer"]["sha256"]) == 16
    # The hash follows the scorer's code: eval_mmstar and eval_ai2d share eval_mcq, but are two modules.
    assert R.scorer_identity("mmstar")["sha256"] != R.scorer_identity("ai2d")["sha256"]
    assert R.scorer_identity("mmbench") == {**R.scorer_identity("mmbench_cn")}
    assert R.scorer_identity("nope") is None


def test_scorer_hash_covers_the_modules_it_imports(tmp_path):
    d = tmp_path / "eval"
    d.mkdir()
    (d / "__init__.py").write_text("X = 1\n")
    (d / "helper.py").write_text("Y = 1\n")
    (d / "eval_mme.py").write_text("from llava.eval import X\nfrom llava.eval.helper import Y\n")
    first = R.scorer_identity("mme", str(d))
    (d / "helper.py").write_text("Y = 2\n")
    assert R.scorer_identity("mme", str(d)) != first
    (d / "unrelated.py").write_text("Z = 1\n")
    changed = R.scorer_identity("mme", str(d))
    (d / "unrelated.py").write_text("Z = 2\n")
    assert R.scorer_identity("mme", str(d)) == changed


def _edit(path, **fields):
    data = json.loads(path.read_text())
    data.update(fields)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("field,value,message", [
    ("git_commit", "0" * 40, "records disagree on git_commit: results/textvqa/dart-192.json has 0000000000 where "),
    ("model", "llava-v1.5-13b", "records disagree on model: results/textvqa/dart-192.json has llava-v1.5-13b where "),
    ("scorer", {"module": "llava.eval.eval_textvqa", "sha256": "feedfeedfeedfeed"},
     "records disagree on scorer: results/textvqa/dart-192.json has llava.eval.eval_textvqa@feedfeedfeedfeed where "),
    ("answers", 1, "results/textvqa/dart-192.json is incomplete: answers 1 but questions 2"),
])
def test_disagreeing_records_are_refused_or_flagged(results, tmp_path, monkeypatch, capsys, field, value, message):
    res = copy_results(results, tmp_path)
    monkeypatch.chdir(tmp_path)
    _edit(res / "textvqa" / "dart-192.json", **{field: value})
    assert cli.main(["report", "results", "--table", "comparison"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert "--allow-mixed" in err[0]
    if field != "answers":
        assert "results/" in err[0].split(" where ")[1]  # names the record it disagrees with
    assert not (res / "comparison.md").exists()

    assert cli.main(["report", "results", "--table", "comparison", "--allow-mixed"]) == 0
    md = (res / "comparison.md").read_text()
    assert "| DART | **63.0** | <u>1800</u> | <u>57.0</u><sup>1</sup> | <u>61.4</u> | <u>97.8%</u> |" in md
    assert "\n<sup>1</sup> results/textvqa/dart-192.json: " in md
    assert r"\underline{57.0}$^{1}$" in (res / "comparison.tex").read_text()
    rows = list(csv.DictReader(io.StringIO((res / "comparison.csv").read_text())))
    dart = next(r for r in rows if r["method"] == "dart")
    assert dart["flags"].startswith("TextVQA: ")


def test_a_second_record_for_a_cell_is_an_error_naming_both(results, tmp_path, monkeypatch, capsys):
    res = copy_results(results, tmp_path)
    monkeypatch.chdir(tmp_path)
    (res / "mme" / "fastv-192-again.json").write_text((res / "mme" / "fastv-192.json").read_text())
    assert cli.main(["report", "results", "--table", "comparison", "--allow-mixed"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: results/mme/fastv-192-again.json and results/mme/fastv-192.json are both FastV at 192 "
                   "tokens on MME; keep one (or choose with --match)")
    # --match picks one; another layer is another row, not a duplicate.
    _edit(res / "mme" / "fastv-192-again.json", layer=3)
    assert cli.main(["report", "results", "--table", "comparison"]) == 0
    md = (res / "comparison.md").read_text()
    assert "| FastV (K=2) | <u>61.0</u> | 1700 | 55.0 | 58.9 | 93.8% |" in md
    assert "| FastV (K=3) |  | 1700 |  |  |  |" in md


def _comparison(results, **kw):
    return C.build_comparison(load_records(str(results)), **kw)


def test_published_rows_beside_ours_not_ranked(results):
    comp = _comparison(results, published=True)
    md = C.render_markdown(comp)
    # DART's own Table 1 at 192: Acc. (63.6 + 1856/28 + 57.4) / 3 = 62.43; Rel. against DART's own vanilla
    # (64.7, 1862, 58.2): (.982998 + .996778 + .986254) / 3 = 98.88. Higher than ours, yet not bold.
    assert "| DART †DART-T1 | 63.6 | 1856 | 57.4 | 62.4 | 98.9% |" in md
    assert "| DART | **63.0** | <u>1800</u> | <u>57.0</u> | <u>61.4</u> | <u>97.8%</u> |" in md
    assert "| llava-v1.5-7b †DART-T1 | 64.7 | 1862 | 58.2 | 63.1 | 100.0% |" in md
    # The paper's Table 5 gives MME only: no Acc. or Rel.; Section 4.7.1 gives TextVQA and MMB at 192.
    assert "| EntropyPrune †EP-T5 |  | 1844 |  |  |  |" in md
    assert "| EntropyPrune †EP-4.7 | 64.6 |  | 57.6 |  |  |" in md
    # CDPruner's page reports MME perception: shown with its mark, not averaged.
    assert "| CDPruner †CDPruner-P | 63.1 | 1431.4 (P) | 56.2 |  |  |" in md
    assert "CDPruner-P reports MME as perception only (marked (P))" in md
    assert "†DART-T1: DART (Wen et al., arXiv 2502.11494), Table 1; MME = perception + cognition." in md
    assert "EntropyPrune at 192 tokens: Rel. 98.1% over the paper's eight Table 1 benchmarks" in md
    # No published rows at 64 tokens: no runs of ours there.
    assert "†DART-T1 | 55.9" not in md
    rows = list(csv.DictReader(io.StringIO(C.render_csv(comp))))
    pub = [r for r in rows if r["origin"] == "published"]
    assert {r["source"] for r in pub} == {"EP-T5", "EP-4.7", "DART-T1", "CDPruner-P"}
    cdp = next(r for r in pub if r["method"] == "cdpruner" and r["source"] == "CDPruner-P")
    assert cdp["MME"] == "1431.4" and cdp["acc"] == "" and "MME is perception only" in cdp["flags"]

    ranked = C.render_markdown(_comparison(results, published=True, rank_published=True))
    assert "| DART †DART-T1 | <u>63.6</u> | **1856** | 57.4 | **62.4** | <u>98.9%</u> |" in ranked
    assert "| EntropyPrune †EP-4.7 | **64.6** |  | **57.6** |  |  |" in ranked
    assert "| DART | 63.0 | 1800 | 57.0 | 61.4 | 97.8% |" in ranked
    assert "second underlined (our runs and the published ones). † published.\n" in ranked

    # --mme perception: ours are 1562 / 1400 ...; CDPruner's page now compares, DART's total does not.
    perc = C.render_markdown(_comparison(results, published=True, mme="perception"))
    assert "| CDPruner †CDPruner-P | 63.1 | 1431.4 | 56.2 |" in perc
    assert "| DART †DART-T1 | 63.6 | 1856 (P+C) | 57.4 |  |  |" in perc
    assert "| EntropyPrune | **63.0** | **1550.0** | **57.5** |" in perc


def test_published_rows_only_for_their_checkpoint(tmp_path, capsys):
    write_run(tmp_path, "textvqa", "tiny-vanilla", 40.0, model="tiny-llava")
    write_run(tmp_path, "textvqa", "tiny-fastv", 30.0, "fastv", 192, model="tiny-llava")
    records = load_records(str(tmp_path / "results"))
    md = C.render_markdown(C.build_comparison(records, published=True))
    assert "†" not in md
    assert "published numbers are for llava-v1.5-7b, the records are of 'tiny-llava'" in capsys.readouterr().err
    forced = C.render_markdown(C.build_comparison(records, published=True, published_force=True))
    assert "| FastV †DART-T1 | 52.5 |" in forced


def test_rank_marks_ties_and_rounding():
    # Dense ranking on the displayed value: 57.04 and 56.96 both show 57.0 and share the best mark.
    assert C.rank_marks({"a": 57.04, "b": 56.96, "c": 55.0, "d": 55.0, "e": 50.0}, 1) == \
        {"a": "best", "b": "best", "c": "second", "d": "second"}
    assert C.rank_marks({"a": 1.0, "b": 1.0}, 1) == {"a": "best", "b": "best"}
    assert C.rank_marks({"a": 1.0}, 1) == {}
    assert C.rank_marks({"a": 1850.4, "b": 1849.6}, 0) == {"a": "best", "b": "best"}


def test_acc_and_rel_formulas():
    scores = {"mme": 1400.0, "ocrbench": 300.0, "textvqa": 50.0}
    upper = {"mme": 1750.0, "ocrbench": 400.0, "textvqa": 60.0}
    benches = ["mme", "ocrbench", "textvqa"]
    # (1400/2800*100 + 300/10 + 50) / 3 = (50 + 30 + 50) / 3
    assert C.average_accuracy(scores, benches) == pytest.approx(130 / 3)
    # perception: 1400/2000*100 = 70
    assert C.average_accuracy(scores, benches, "perception") == pytest.approx(150 / 3)
    # (0.8 + 0.75 + 0.8333) / 3
    assert C.relative(scores, upper, benches) == pytest.approx((0.8 + 0.75 + 50 / 60) / 3 * 100)
    # (130/3) / ((62.5 + 40 + 60) / 3)
    assert C.relative(scores, upper, benches, "acc-ratio") == pytest.approx(130 / 162.5 * 100)
    assert C.average_accuracy({"mme": 1.0}, benches) is None
    assert C.relative(scores, {"mme": 1750.0}, benches) is None


def test_radar_normalisation():
    rows = {"A": {"mmbench": 60.0, "mme": 1800.0, "sqa": 69.0, "textvqa": 50.0},
            "B": {"mmbench": 64.0, "mme": 1700.0, "sqa": 69.0, "textvqa": 58.0},
            "C": {"mmbench": 61.0, "mme": 1750.0, "sqa": 69.0}}
    used, values = C.radar_values(rows, ["mmbench", "mme", "sqa", "textvqa"])
    assert used == ["mmbench", "mme", "sqa"]  # TextVQA: C has none
    # MMB: (60-60)/4, (64-60)/4, (61-60)/4; MME: (1800-1700)/100, 0, 0.5; SQA: all equal -> 1
    assert values == {"A": [0.0, 1.0, 1.0], "B": [1.0, 0.0, 1.0], "C": [0.25, 0.5, 1.0]}


def test_radar_budget_and_figures_need_enough_data(results, tmp_path, capsys):
    comp = _comparison(results)
    at, rows = C.radar_rows(comp, 128)
    assert at == 128 and list(rows) == ["FastV", "EntropyPrune"]
    assert not C.plot_radar(comp, str(tmp_path / "r.png"), 128)  # two benchmarks in common, radar needs three
    assert "radar chart: needs" in capsys.readouterr().err
    with pytest.raises(C.ComparisonError, match="--radar-budget 100: no runs at that budget"):
        C.radar_rows(comp, 100)
    out = tmp_path / "out"
    assert cli.main(["report", str(results), "--table", "comparison", "--radar-budget", "100", "--out", str(out)]) == 2
    assert "error: --radar-budget 100: no runs at that budget (budgets: 192, 128)" in capsys.readouterr().err
    assert not out.exists()


def test_no_records_is_one_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli.main(["report", str(tmp_path / "empty"), "--table", "comparison"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: no run records to compare")
