"""scripts/ablation/*.sh end to end on the tiny checkpoint and the demo data: which runs each sweep makes and
names, one GPU per child, finished runs skipped and broken ones redone, failures, bad settings, the reports.

Every sweep here uses SWEEP=t, so the runs they have in common are shared (run once by the method sweep, then
skipped as finished by the others): the file stays short and that sharing rule is tested on the way.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from llava.tools import make_demo_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CKPT = "llava-v1.5-tiny"
# AVG_TOKENS=300 on the 4-layer tiny model: N = (4*300 - 2*576) / 2 = 24 kept after layer 2; 300 at layer 0.
BUDGET = "300"
RUNS = {f"{CKPT}-t-vanilla": (None, None), f"{CKPT}-t-entropy-L2-avg300": ("entropy", 2)}
VANILLA, ENTROPY = RUNS

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="the sweeps need bash")


def sweep(script, eval_root, results, calls=None, **env):
    full = {**os.environ, "PYTHON": sys.executable, "CKPT": CKPT, "EVAL_ROOT": str(eval_root),
            "RESULTS_DIR": str(results), "EVAL_ARGS": "--max-new-tokens 2", "SWEEP": "t", "HF_HUB_OFFLINE": "1",
            "CUDA_VISIBLE_DEVICES": ""}
    for var in ("METHOD", "METHODS", "LAYER", "LAYERS", "KEEP", "AVG_TOKENS", "RATIO", "STATES", "VARIANT", "SEED",
                "RUN_NAME", "BENCH", "BENCHMARKS", "BASELINE", "PRUNE_OPTIONS", "REPORT_DIR", "LOG_DIR", "BATCH_SIZE",
                "REPORT_ARGS", "EFFICIENCY_ARGS", "EFFICIENCY_JSON"):
        full.pop(var, None)
    if calls is not None:  # an interpreter that notes the GPU list and run of every Python call, then runs it
        wrapper = os.path.join(os.path.dirname(str(calls)), "python-wrapper.sh")
        with open(wrapper, "w") as f:
            f.write(f'#!/usr/bin/env bash\necho "${{CUDA_VISIBLE_DEVICES-unset}} ${{RUN_NAME:-}}" >> "{calls}"\n'
                    f'exec "{sys.executable}" "$@"\n')
        os.chmod(wrapper, 0o755)
        full["PYTHON"] = wrapper
    full.update(env)
    return subprocess.run(["bash", os.path.join(REPO, "scripts", "ablation", script)], cwd=REPO, env=full,
                          capture_output=True, text=True, timeout=300)


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def swept(tiny_llava, tmp_path_factory):
    """One method sweep on MME over two fake GPUs: the unpruned run and entropy at layer 2, side by side."""
    root = tmp_path_factory.mktemp("sweep")
    eval_root = root / "eval"
    make_demo_data.build(str(eval_root), seed=0, mme_images=1)
    results, calls = root / "results", root / "calls.txt"
    proc = sweep("method_sweep.sh", eval_root, results, calls=calls, MODEL_PATH=tiny_llava, METHODS="entropy",
                 AVG_TOKENS=BUDGET, BENCHMARKS="mme", CUDA_VISIBLE_DEVICES="0,1")
    return {"proc": proc, "eval": eval_root, "results": results, "calls": calls, "model": tiny_llava}


def rerun(swept, **env):
    return sweep("method_sweep.sh", swept["eval"], swept["results"], MODEL_PATH=swept["model"], METHODS="entropy",
                 AVG_TOKENS=BUDGET, BENCHMARKS="mme", **env)


def test_method_sweep_runs_each_combination_on_its_own_gpu(swept):
    proc, results = swept["proc"], swept["results"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(os.listdir(results / "mme")) == sorted(f"{n}.json" for n in RUNS)
    records = {name: load(results / "mme" / f"{name}.json") for name in RUNS}
    for name, (method, layer) in RUNS.items():
        assert (records[name]["method"], records[name]["layer"]) == (method, layer), name
    assert records[ENTROPY]["keep"] == 24 and records[ENTROPY]["budget"] == {"avg_tokens": 300}
    # Each run's Python processes saw exactly one GPU, the one the sweep gave that run, and the two runs had
    # one each: the benchmark scripts did not split them into chunks.
    given = {}
    for line in proc.stdout.splitlines():
        if line.startswith("==== [") and " GPU " in line:
            given[line.rsplit("(", 1)[1].split(")")[0]] = line.split(" GPU ")[1].split(":")[0]
    assert set(given) == set(RUNS) and set(given.values()) == {"0", "1"}
    seen = {}
    with open(swept["calls"]) as f:
        for line in f:
            gpus, _, run = line.strip().partition(" ")
            if run:
                seen.setdefault(run, set()).add(gpus)
    assert seen == {name: {gpu} for name, gpu in given.items()}
    for name in RUNS:
        log = results / "logs" / f"{CKPT}-t" / "mme" / f"{name}.log"
        assert f"record: {results / 'mme' / name}.json" in log.read_text()
        assert not os.path.isdir(swept["eval"] / "MME" / "answers" / name)  # no chunk folder
    md = (results / "ablation" / f"{CKPT}-t" / "report.md").read_text()
    assert "## MME: Perception" in md and "| entropy |" in md and f"Unpruned: 0.00 (run `{VANILLA}`)" in md
    # And Table 1's layout: the unpruned group, then the budget's group with the method in it.
    table = (results / "ablation" / f"{CKPT}-t" / "comparison.md").read_text()
    assert table.index("Upper bound") < table.index(f"{BUDGET} tokens") < table.index("EntropyPrune")
    assert (results / "ablation" / f"{CKPT}-t" / "comparison.tex").is_file()
    assert "summary: 2 runs: 2 run now, 0 already finished, 0 failed" in proc.stdout


def test_a_rerun_skips_finished_runs_and_redoes_only_the_broken_one(swept):
    results, eval_root = swept["results"], swept["eval"]
    assert swept["proc"].returncode == 0
    before = {name: load(results / "mme" / f"{name}.json") for name in RUNS}
    answers = {name: (eval_root / "MME" / "answers" / f"{name}.jsonl").read_text() for name in RUNS}

    # A lost record: that run is done again (its answers are all there: scored and recorded), the other skipped.
    mtime = os.path.getmtime(results / "mme" / f"{ENTROPY}.json")
    os.remove(results / "mme" / f"{VANILLA}.json")
    proc = rerun(swept)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"skip: {ENTROPY} (mme) is finished" in proc.stdout
    assert "summary: 2 runs: 1 run now, 1 already finished, 0 failed" in proc.stdout
    assert "all 28 answers present; nothing to do" in proc.stdout
    assert os.path.getmtime(results / "mme" / f"{ENTROPY}.json") == mtime

    # An answers file cut after 5 of its 28 answers (a run killed half-way): that run resumes, the other is skipped.
    mtime = os.path.getmtime(results / "mme" / f"{VANILLA}.json")
    cut = eval_root / "MME" / "answers" / f"{ENTROPY}.jsonl"
    cut.write_text("".join(answers[ENTROPY].splitlines(keepends=True)[:5]))
    proc = rerun(swept)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"skip: {VANILLA} (mme) is finished" in proc.stdout
    assert "summary: 2 runs: 1 run now, 1 already finished, 0 failed" in proc.stdout
    assert os.path.getmtime(results / "mme" / f"{VANILLA}.json") == mtime

    after = {name: load(results / "mme" / f"{name}.json") for name in RUNS}
    for name in RUNS:
        assert after[name]["scores"] == before[name]["scores"] and after[name]["answers"] == 28, name
    old = [json.loads(x) for x in answers[ENTROPY].splitlines()]
    new = [json.loads(x) for x in cut.read_text().splitlines()]
    # The 5 answers left were kept as they were (same answer ids); the 23 others were answered again, the same.
    assert new[:5] == old[:5] and [r["answer_id"] for r in new[5:]] != [r["answer_id"] for r in old[5:]]
    assert [(r["question_id"], r["text"]) for r in new] == [(r["question_id"], r["text"]) for r in old]
    assert (eval_root / "MME" / "answers" / f"{VANILLA}.jsonl").read_text() == answers[VANILLA]


def test_a_failing_run_does_not_stop_the_others(swept, tmp_path):
    assert swept["proc"].returncode == 0
    # No data here, so the MMStar runs fail at once; the MME runs are finished and skipped.
    empty = tmp_path / "nothing"
    empty.mkdir()
    proc = sweep("method_sweep.sh", empty, swept["results"], MODEL_PATH=swept["model"], METHODS="entropy",
                 AVG_TOKENS=BUDGET, BENCHMARKS="mmstar mme")
    assert proc.returncode == 1
    assert f"failed runs (2 of 4): {VANILLA} {ENTROPY};" in proc.stderr
    assert "summary: 4 runs: 0 run now, 2 already finished, 2 failed" in proc.stdout
    assert proc.stdout.count("error: MMStar data not found") == 2  # the runs' own messages, shown as they run
    assert "==== report:" in proc.stdout and "## MME: Perception" in proc.stdout  # made from what finished


@pytest.mark.parametrize("script, env, message", [
    ("method_sweep.sh", {"METHODS": "entropy nosuch"}, "METHODS: nosuch is not a registered pruning method"),
    ("method_sweep.sh", {"BENCHMARKS": "mme nosuch"}, "BENCHMARKS: no benchmark script for nosuch"),
    ("method_sweep.sh", {"KEEP": "64", "AVG_TOKENS": "192"},
     "give one budget kind for the sweep, got KEEP and AVG_TOKENS"),
    ("layer_sweep.sh", {"AVG_TOKENS": "192 128"}, "this sweep takes one budget"),
    ("efficiency_sweep.sh", {"RATIO": "0.5"}, "Table 5's rows are average-token budgets"),
])
def test_bad_settings_stop_before_anything_runs(tmp_path, script, env, message):
    results = tmp_path / "results"
    proc = sweep(script, tmp_path, results, **env)
    assert proc.returncode == 1 and message in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert proc.stdout == "" and not results.exists()


def test_selection_and_layer_sweeps_find_their_runs_finished(swept):
    """Table 6's and Figure 5's sweeps with the method sweep's name: every run of theirs is finished, so nothing
    runs again and their reports are made."""
    results = swept["results"]
    assert swept["proc"].returncode == 0
    proc = sweep("selection.sh", swept["eval"], results, MODEL_PATH=swept["model"], METHODS="entropy",
                 AVG_TOKENS=BUDGET, BENCHMARKS="mme")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "summary: 2 runs: 0 run now, 2 already finished, 0 failed" in proc.stdout
    assert (results / "ablation" / f"{CKPT}-t" / "report.md").is_file()

    proc = sweep("layer_sweep.sh", swept["eval"], results, MODEL_PATH=swept["model"], METHODS="entropy",
                 LAYERS="2", AVG_TOKENS=BUDGET, BENCH="mme", BASELINE="1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "summary: 2 runs: 0 run now, 2 already finished, 0 failed" in proc.stdout
    md = (results / "ablation" / f"{CKPT}-t-mme" / "report.md").read_text()
    assert "| method | K=2 |" in md and "| entropy |" in md


def test_states_sweep_runs_key_states_beside_the_finished_query_run(swept):
    results = swept["results"]
    assert swept["proc"].returncode == 0
    proc = sweep("states.sh", swept["eval"], results, MODEL_PATH=swept["model"], AVG_TOKENS=BUDGET,
                 BENCHMARKS="mme", BASELINE="0")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"skip: {ENTROPY} (mme) is finished" in proc.stdout
    assert "summary: 2 runs: 1 run now, 1 already finished, 0 failed" in proc.stdout
    key, query = load(results / "mme" / f"{ENTROPY}-key.json"), load(results / "mme" / f"{ENTROPY}.json")
    assert (key["states"], query["states"], key["keep"], query["keep"]) == ("key", "query", 24, 24)


def test_efficiency_sweep_joins_timings_and_mme_scores(swept):
    """Table 5 from one command: the timing rows first, then the MME runs (finished already), one table."""
    results = swept["results"]
    assert swept["proc"].returncode == 0
    env = {"MODEL_PATH": swept["model"], "METHODS": "entropy", "AVG_TOKENS": BUDGET, "REPEATS": "1", "NEW_TOKENS": "2",
           "NUM_QUESTIONS": "1", "EFFICIENCY_ARGS": "--dtype float32 --warmup 0", "DEVICE": "cpu"}
    proc = sweep("efficiency_sweep.sh", swept["eval"], results, **env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "summary: 3 runs: 1 run now, 2 already finished, 0 failed" in proc.stdout
    timing = load(results / "efficiency" / f"{CKPT}-t.json")
    assert [r["label"] for r in timing] == ["vanilla", "entropy@300"]
    out = results / "ablation" / f"{CKPT}-t"
    table = load(out / "table5.json")["rows"]
    assert [(r["label"], r["tokens"], r["run"]) for r in table] == [("vanilla", 576, VANILLA),
                                                                    ("entropy@300", 300, ENTROPY)]
    for row, t in zip(table, timing, strict=True):
        scores = load(results / "mme" / f"{row['run']}.json")["scores"]
        assert (row["mme_total"], row["mme_perception"]) == (scores["total"], scores["perception"])
        assert (row["prefill_s"], row["latency_s"]) == (t["prefill_s"], t["latency_s"])
        assert row["flops_pct"] == 100 * t["flops_fraction"] and row["kv_mb"] == t["kv_visual_bytes"] / 2**20
    md = (out / "table5.md").read_text()
    assert "| *Upper bound, 576 tokens (100%)* |" in md and "| *Retain 300 tokens (-47.9%)* |" in md
    assert (out / "table5.csv").read_text().splitlines()[0] == (
        "label,method,tokens,layer,prefill_s,latency_s,kv_mb,mem_gb,flops_pct,mme_total,mme_perception,run")
    # A rerun would time nothing again: every timing row of this checkpoint is in the file, and no more.
    from llava.eval.sweep import efficiency_done

    path = str(results / "efficiency" / f"{CKPT}-t.json")
    assert efficiency_done(path, ["vanilla", "entropy@300"], CKPT)() == path
    assert efficiency_done(path, ["vanilla", "entropy@300", "entropy@290"], CKPT)() is None
    assert efficiency_done(path, ["vanilla"], "llava-other")() is None


# ------------------------------------------------------------------------------- the plans, without running


def plan(kind, **env):
    from llava.eval import sweep as S

    base = {"CKPT": "m", "RESULTS_DIR": "r"}
    return {"methods": S.plan_methods, "layers": S.plan_layers, "efficiency": S.plan_efficiency}[kind]({**base, **env})


def test_the_default_method_sweep_is_table_1():
    c, runs, benches, notes = plan("methods")
    assert benches == ["mme", "textvqa", "sqa", "mmbench", "mmbench_cn", "mmvet", "mmstar"] and notes == []
    mme = [r for r in runs if r.bench == "mme"]
    # Per benchmark: the unpruned run, then 8 methods at each of 192, 128, 64; vision-stage methods at layer 0,
    # PruMerge (adaptive by default) given the budget by turning its own count off.
    assert len(runs) == 7 * (1 + 3 * 8) and len(mme) == 25 and mme[0].name == "m-methods-vanilla"
    assert mme[0].env == {"RUN_NAME": "m-methods-vanilla"}
    assert [r.name for r in mme[1:9]] == [
        "m-methods-fastv-L2-avg192", "m-methods-pdrop-L2-avg192", "m-methods-sparsevlm-L2-avg192",
        "m-methods-dart-L2-avg192", "m-methods-divprune-L0-avg192", "m-methods-cdpruner-L0-avg192",
        "m-methods-prumerge-L0-avg192-adaptivefalse", "m-methods-entropy-L2-avg192"]
    assert mme[7].env == {"METHOD": "prumerge", "LAYER": "0", "AVG_TOKENS": "192", "PRUNE_OPTIONS": "adaptive=false",
                          "RUN_NAME": "m-methods-prumerge-L0-avg192-adaptivefalse"}
    assert [r.env["AVG_TOKENS"] for r in mme[1::8]] == ["192", "128", "64"]


def test_plans_for_selection_states_options_and_layers():
    # Table 6: LAYER for every in-model method; DivPrune cannot move and says so.
    _, runs, _, notes = plan("methods", METHODS="entropy divprune", LAYER="3", KEEP="64", BENCHMARKS="sqa",
                             BASELINE="0")
    assert [r.name for r in runs] == ["m-methods-entropy-L3-keep64", "m-methods-divprune-L0-keep64"]
    assert notes == ["note: divprune prunes before the language model only (layer 0); its runs use layer 0, "
                     "not LAYER=3"]
    # Table 7's STATES list, per-method options in the run name, VARIANT's tag.
    _, runs, _, _ = plan("methods", METHODS="entropy pdrop", STATES="query key", RATIO="0.5", BENCHMARKS="mme",
                         BASELINE="0", VARIANT="paper", PRUNE_OPTIONS="pdrop:layer_list=2,3")
    assert [r.name for r in runs] == ["m-methods-entropy-L2-ratio0.5-paper", "m-methods-entropy-L2-ratio0.5-key-paper",
                                      "m-methods-pdrop-L2-ratio0.5-paper-layer_list2.3",
                                      "m-methods-pdrop-L2-ratio0.5-key-paper-layer_list2.3"]
    assert runs[1].env["STATES"] == "key" and runs[2].env["PRUNE_OPTIONS"] == "layer_list=2,3"
    # Figure 5: methods x layers on two benchmarks, the same names as the layer sweep always had.
    _, runs, benches, _ = plan("layers", METHODS="entropy fastv", LAYERS="1 2", BENCH="textvqa mmbench")
    assert benches == ["textvqa", "mmbench"] and len(runs) == 8
    assert [r.name for r in runs[:4]] == ["m-layersweep-entropy-L1-avg192", "m-layersweep-entropy-L2-avg192",
                                          "m-layersweep-fastv-L1-avg192", "m-layersweep-fastv-L2-avg192"]
    from llava.eval.sweep import SweepError

    for kind, env, message in [("layers", {"METHODS": "divprune"}, "a layer sweep cannot move it"),
                               ("layers", {"LAYERS": "0 2"}, "LAYERS: 0 is before the language model"),
                               ("methods", {"METHODS": "fastv", "LAYER": "0"}, "fastv prunes inside the language"),
                               ("methods", {"PRUNE_OPTIONS": "dart:nosuch=1"}, "nosuch is not an option of 'dart'"),
                               ("methods", {"AVG_TOKENS": "-3"}, "'-3' is not a valid budget"),
                               ("methods", {"SWEEP": "a/b"}, "SWEEP='a/b' is not a plain file name")]:
        with pytest.raises(SweepError, match=message):
            plan(kind, **env)


def test_the_efficiency_plan_times_first_with_the_runs_settings():
    _, runs, benches, _, out = plan("efficiency", MODEL_PATH="/ckpt/llava-x", METHODS="fastv cdpruner prumerge")
    timing = runs[0]
    assert (benches, out, timing.bench) == (["mme"], "r/efficiency/m-table5.json", "efficiency")
    assert timing.env == {"METHODS": "fastv,cdpruner,prumerge", "BUDGETS": "192,128", "OUT": out,
                          "MODEL_PATH": "/ckpt/llava-x"}
    assert timing.argv[2:] == ["--layer", "2", "--method-option", "prumerge:adaptive=false"]
    assert [r.name for r in runs[1:]] == [
        "m-table5-vanilla", "m-table5-fastv-L2-avg192", "m-table5-cdpruner-L0-avg192",
        "m-table5-prumerge-L0-avg192-adaptivefalse", "m-table5-fastv-L2-avg128", "m-table5-cdpruner-L0-avg128",
        "m-table5-prumerge-L0-avg128-adaptivefalse"]


def test_a_run_is_finished_only_when_its_record_and_answers_are_complete(tmp_path):
    from llava.eval.sweep import finished

    answers = tmp_path / "a.jsonl"
    answers.write_text('{"question_id": 1}\n{"question_id": 2}\n')
    record = tmp_path / "mme" / "run.json"
    record.parent.mkdir()
    fields = {"run_name": "run", "benchmark": "mme", "answers_file": str(answers), "answers": 2, "questions": 2}
    record.write_text(json.dumps(fields))
    assert finished(str(tmp_path), "mme", "run") == str(record)
    assert finished(str(tmp_path), "mme", "other") is None  # no record
    answers.write_text('{"question_id": 1}\n')  # cut (and newer than the record)
    os.utime(answers, (0, 0))
    assert finished(str(tmp_path), "mme", "run") is None
    answers.write_text('{"question_id": 1}\n{"question_id": 2}\n')
    now = os.path.getmtime(record)
    os.utime(answers, (now + 5, now + 5))  # rewritten after the record: the record may not describe it
    assert finished(str(tmp_path), "mme", "run") is None
    os.utime(answers, (now - 5, now - 5))
    assert finished(str(tmp_path), "mme", "run") == str(record)
    record.write_text(json.dumps({**fields, "questions": 3}))  # a record of an incomplete run
    assert finished(str(tmp_path), "mme", "run") is None
    record.write_text("{")
    assert finished(str(tmp_path), "mme", "run") is None


def test_table_2_is_a_method_sweep_on_the_llava_next_checkpoint():
    # Table 2 (LLaVA-NeXT-7B): the in-LLM methods at an absolute 640 / 320 / 160 after layer 2 on five
    # benchmarks; Table 2 has no vision-stage method (theirs budget per view on LLaVA-1.6), so METHODS names these.
    benchmarks = "textvqa mmvet ocrbench mmmu ai2d"
    _, runs, benches, notes = plan("methods", CKPT="llava-v1.6-vicuna-7b", METHODS="fastv pdrop sparsevlm dart entropy",
                                   KEEP="640 320 160", BENCHMARKS=benchmarks)
    assert benches == benchmarks.split() and notes == []
    assert len(runs) == 5 * (1 + 3 * 5)
    text = [r for r in runs if r.bench == "textvqa"]
    assert text[0].name == "llava-v1.6-vicuna-7b-methods-vanilla"
    assert [r.name for r in text[1:6]] == [f"llava-v1.6-vicuna-7b-methods-{m}-L2-keep640"
                                           for m in ("fastv", "pdrop", "sparsevlm", "dart", "entropy")]
    assert text[5].env == {"METHOD": "entropy", "LAYER": "2", "KEEP": "640",
                           "RUN_NAME": "llava-v1.6-vicuna-7b-methods-entropy-L2-keep640"}
    assert [r.env["KEEP"] for r in text[5::5]] == ["640", "320", "160"]
    assert all(os.path.isfile(os.path.join(REPO, "scripts", "eval", f"{b}.sh")) for b in benches)
