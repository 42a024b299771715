"""scripts/eval/*.sh end to end on the tiny checkpoint and the demo data: answers, scores, run records."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from llava.tools import make_demo_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(REPO, "scripts", "eval")
RECORD_FIELDS = {"run_name", "benchmark", "model", "model_path", "method", "layer", "keep", "avg_tokens", "scores",
                 "score_name", "score", "wall_time_s", "version", "git_commit", "answers", "answers_file"}

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="the eval scripts need bash")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("eval"))
    make_demo_data.build(root, seed=0, mme_images=1)
    return root


def run_script(name, tiny_llava, eval_root, results, cwd=REPO, **env):
    full_env = {
        **os.environ,
        "PYTHON": sys.executable,
        "CKPT": "llava-v1.5-tiny",
        "MODEL_PATH": tiny_llava,
        "EVAL_ROOT": str(eval_root),
        "RESULTS_DIR": str(results),
        # Random weights rarely emit EOS: a few tokens per answer keep the run short.
        "EVAL_ARGS": "--max-new-tokens 3",
        "CUDA_VISIBLE_DEVICES": "",
        "HF_HUB_OFFLINE": "1",
        **env,
    }
    for var in ("METHOD", "LAYER", "KEEP", "AVG_TOKENS", "RATIO", "STATES", "VARIANT", "SEED", "RUN_NAME",
                "BENCHMARKS", "BATCH_SIZE", "BUCKET_WINDOW", "PRUNE_OPTIONS", "MMVET_GRADE", "MMVET_API_KEY"):
        if var not in env:
            full_env.pop(var, None)
    return subprocess.run(["bash", os.path.join(SCRIPTS, name)], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=600)


def read_lines(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# benchmark -> (answers file under EVAL_ROOT, questions, scorer summary, headline score)
EXPECTED = {
    "mme": ("MME/answers/{run}.jsonl", 28, "MME/answers/{run}_scores.json", "perception"),
    "textvqa": ("textvqa/answers/{run}.jsonl", 5, "textvqa/answers/{run}_scores.json", "accuracy"),
    "sqa": ("scienceqa/answers/{run}.jsonl", 5, "scienceqa/answers/{run}_scores.json", "img_accuracy"),
    "mmbench": ("mmbench/answers/mmbench_dev_20230712/{run}.jsonl", 9,
                "mmbench/answers/mmbench_dev_20230712/{run}_scores.json", "circular_eval"),
    "mmbench_cn": ("mmbench_cn/answers/mmbench_dev_cn_20231003/{run}.jsonl", 9,
                   "mmbench_cn/answers/mmbench_dev_cn_20231003/{run}_scores.json", "circular_eval"),
    "mmvet": ("mm-vet/answers/{run}.jsonl", 4, None, "total"),
}


def test_all_scripts_end_to_end_with_pruning(tiny_llava, demo, tmp_path):
    results = tmp_path / "results"
    # The tiny model has 4 layers: keep N=166 after layer 2 (AVG_TOKENS=192 is a 32-layer budget).
    proc = run_script("all.sh", tiny_llava, demo, results, cwd=str(tmp_path), METHOD="entropy", LAYER="2",
                      KEEP="166")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = "llava-v1.5-tiny-entropy-L2-keep166"
    for bench, (answers, n, scores, headline) in EXPECTED.items():
        lines = read_lines(os.path.join(demo, answers.format(run=run)))
        assert len(lines) == n, bench
        for line in lines:
            assert {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"} <= set(line)
        record = load(results / bench / f"{run}.json")
        assert RECORD_FIELDS <= set(record), bench
        assert record["benchmark"] == bench and record["run_name"] == run
        assert record["model"] == "llava-v1.5-tiny" and record["model_path"] == os.path.abspath(tiny_llava)
        assert (record["method"], record["layer"], record["keep"]) == ("entropy", 2, 166)
        assert record["avg_tokens"] == (2 * 576 + 2 * 166) / 4 and record["visual_tokens"] == 576
        assert record["budget"] == {"keep": 166} and record["answers"] == n
        assert record["wall_time_s"] > 0 and record["version"]
        assert record["git_commit"] is None or len(record["git_commit"]) == 40
        assert record["generation"]["temperature"] == 0 and record["generation"]["conv_mode"] == "vicuna_v1"
        if scores:
            summary = load(os.path.join(demo, scores.format(run=run)))
            assert record["score"] == summary[headline] and record["score_name"] == headline
        else:  # MM-Vet is graded by GPT-4 outside: no score, a note and the file to submit
            assert record["score"] is None and "MM-Vet" in record["score_note"]
            assert load(record["submission"]).keys() == {f"v1_{i}" for i in range(4)}
    mme = load(results / "mme" / f"{run}.json")["scores"]
    assert {"perception", "cognition", "total", "existence", "code_reasoning"} <= set(mme)
    assert os.path.isfile(os.path.join(demo, "MME", "eval_tool", "answers", run, "existence.txt"))
    assert os.path.isfile(os.path.join(demo, "mmbench", "answers_upload", "mmbench_dev_20230712", f"{run}.xlsx"))
    # The MMBench-CN upload goes under mmbench_cn/ (LLaVA's script created the folder under mmbench/).
    assert os.path.isfile(os.path.join(demo, "mmbench_cn", "answers_upload", "mmbench_dev_cn_20231003",
                                       f"{run}.xlsx"))
    assert "record: " in proc.stdout and "Perception:" in proc.stdout

    # A rerun resumes: every answer is there, so nothing is regenerated (same answer ids), and it is recorded again.
    mme_answers = os.path.join(demo, EXPECTED["mme"][0].format(run=run))
    before = open(mme_answers, "rb").read()
    proc = run_script("mme.sh", tiny_llava, demo, results, METHOD="entropy", LAYER="2", KEEP="166")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "nothing to do" in proc.stderr
    assert open(mme_answers, "rb").read() == before


# The benchmarks beyond the paper's tables: (answers file, questions, scorer summary); the headline is "overall".
EXPECTED_MORE = {
    "gqa": ("gqa/answers/llava_gqa_testdev_balanced/{run}.jsonl", 5,
            "gqa/answers/llava_gqa_testdev_balanced/{run}_scores.json"),
    "pope": ("pope/answers/{run}.jsonl", 6, "pope/answers/{run}_scores.json"),
    "mmstar": ("mmstar/answers/{run}.jsonl", 3, "mmstar/answers/{run}_scores.json"),
    "ai2d": ("ai2d/answers/{run}.jsonl", 2, "ai2d/answers/{run}_scores.json"),
    "ocrbench": ("ocrbench/answers/{run}.jsonl", 3, "ocrbench/answers/{run}_scores.json"),
    "mmmu": ("mmmu/answers/{run}.jsonl", 4, "mmmu/answers/{run}_scores.json"),
}


def test_more_benchmark_scripts_end_to_end(tiny_llava, demo, tmp_path):
    results = tmp_path / "results"
    proc = run_script("all.sh", tiny_llava, demo, results, cwd=str(tmp_path), METHOD="random", LAYER="1",
                      KEEP="100", BENCHMARKS=" ".join(EXPECTED_MORE), EVAL_ARGS="--max-new-tokens 2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = "llava-v1.5-tiny-random-L1-keep100"
    for bench, (answers, n, scores) in EXPECTED_MORE.items():
        lines = read_lines(os.path.join(demo, answers.format(run=run)))
        assert len(lines) == n, bench
        record = load(results / bench / f"{run}.json")
        assert RECORD_FIELDS <= set(record) and record["benchmark"] == bench, bench
        assert (record["method"], record["layer"], record["keep"], record["answers"]) == ("random", 1, 100, n), bench
        summary = load(os.path.join(demo, scores.format(run=run)))
        assert record["score_name"] == "overall" and record["score"] == summary["overall"], bench
        assert record["score"] is not None, bench
    assert set(load(results / "pope" / f"{run}.json")["scores"]) >= {"adversarial_f1", "random_f1", "popular_f1"}
    assert "split_validation" in load(results / "mmmu" / f"{run}.json")["scores"]
    gqa = load(results / "gqa" / f"{run}.json")
    assert [p["questionId"] for p in load(gqa["submission"])] == [
        line["question_id"] for line in read_lines(os.path.join(demo, "gqa", "llava_gqa_testdev_balanced.jsonl"))]
    assert "F1 (mean):" in proc.stdout and "Final Score:" in proc.stdout


def test_more_scripts_missing_data_and_unknown_benchmark(tiny_llava, tmp_path):
    empty = tmp_path / "nothing"
    empty.mkdir()
    for script, what in (("gqa.sh", "gqa/data/testdev_balanced_questions.json"),
                         ("pope.sh", "pope/coco/coco_pope_random.json"), ("mmstar.sh", "mmstar/MMStar.tsv"),
                         ("ai2d.sh", "ai2d/AI2D_TEST.tsv"), ("ocrbench.sh", "ocrbench/OCRBench.tsv"),
                         ("mmmu.sh", "mmmu/MMMU_DEV_VAL.tsv")):
        proc = run_script(script, tiny_llava, empty, tmp_path / "results")
        assert proc.returncode != 0, script
        assert what in proc.stderr and "docs/Evaluation.md" in proc.stderr, script
        assert proc.stderr.count("error:") == 1 and "Traceback" not in proc.stderr, script
    proc = run_script("all.sh", tiny_llava, empty, tmp_path / "results", BENCHMARKS="pope nonsense")
    assert proc.returncode == 1 and "no benchmark script nonsense" in proc.stderr
    assert "failed: pope nonsense" in proc.stderr


def test_two_gpu_chunks_merged_in_order(tiny_llava, demo, tmp_path):
    # Two "GPUs" listed: two chunk processes run side by side (on the CPU here) and are merged in order.
    results = tmp_path / "results"
    proc = run_script("mmvet.sh", tiny_llava, demo, results, CUDA_VISIBLE_DEVICES="0,1", METHOD="entropy",
                      AVG_TOKENS="300", RUN_NAME="chunked")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    answers = os.path.join(demo, "mm-vet", "answers", "chunked.jsonl")
    parts = [os.path.join(demo, "mm-vet", "answers", "chunked", f"2_{i}.jsonl") for i in range(2)]
    assert [r["question_id"] for r in read_lines(answers)] == [0, 1, 2, 3]
    assert read_lines(answers) == read_lines(parts[0]) + read_lines(parts[1])
    record = load(results / "mmvet" / "chunked.json")
    # AVG_TOKENS=300 on 4 layers after layer 2: N = (4*300 - 2*576) // 2 = 24, averaging exactly 300.
    assert (record["keep"], record["avg_tokens"], record["budget"]) == (24, 300.0, {"avg_tokens": 300})


def test_batch_size_from_the_environment_gives_the_same_answers(tiny_llava, demo, tmp_path):
    results = tmp_path / "results"
    runs = {"one": {}, "batched": {"BATCH_SIZE": "3", "BUCKET_WINDOW": "4"}}
    for name, env in runs.items():
        proc = run_script("sqa.sh", tiny_llava, demo, results, METHOD="entropy", LAYER="2", KEEP="64",
                          RUN_NAME=name, **env)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    def answers(name):
        lines = read_lines(os.path.join(demo, "scienceqa", "answers", f"{name}.jsonl"))
        return [(r["question_id"], r["prompt"], r["text"]) for r in lines]

    assert answers("batched") == answers("one") and len(answers("one")) == 5
    one, batched = load(results / "sqa" / "one.json"), load(results / "sqa" / "batched.json")
    assert (one["batch_size"], one["bucket_window"]) == (1, None)
    assert (batched["batch_size"], batched["bucket_window"]) == (3, 4)
    assert batched["score"] == one["score"]


def test_missing_data_is_one_clear_error(tiny_llava, tmp_path):
    empty = tmp_path / "nothing"
    empty.mkdir()
    for script, what in (("mme.sh", "MME/llava_mme.jsonl"), ("textvqa.sh", "textvqa/TextVQA_0.5.1_val.json"),
                         ("sqa.sh", "scienceqa/problems.json"), ("mmbench.sh", "mmbench_dev_20230712.tsv"),
                         ("mmbench_cn.sh", "mmbench_cn/mmbench_dev_cn_20231003.tsv"),
                         ("mmvet.sh", "mm-vet/llava-mm-vet.jsonl")):
        proc = run_script(script, tiny_llava, empty, tmp_path / "results")
        assert proc.returncode != 0, script
        assert what in proc.stderr and "docs/Evaluation.md" in proc.stderr, script
        assert proc.stderr.count("error:") == 1 and "Traceback" not in proc.stderr, script
    proc = run_script("all.sh", tiny_llava, empty, tmp_path / "results")
    assert proc.returncode == 1
    assert "failed: mme textvqa sqa mmbench mmbench_cn mmvet" in proc.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("env, message", [
    ({"METHOD": "entropy"}, "needs exactly one budget"),
    ({"METHOD": "entropy", "KEEP": "64", "RATIO": "0.5"}, "needs exactly one budget"),
    ({"KEEP": "64"}, "METHOD is not"),
])
def test_pruning_environment_is_checked(tiny_llava, demo, tmp_path, env, message):
    proc = run_script("mme.sh", tiny_llava, demo, tmp_path / "results", **env)
    assert proc.returncode != 0 and message in proc.stderr


def test_prune_options_from_the_environment(tiny_llava, demo, tmp_path):
    # A multi-stage method with its stages inside the tiny model, through the script's PRUNE_OPTIONS.
    results = tmp_path / "results"
    proc = run_script("mme.sh", tiny_llava, demo, results, METHOD="pdrop", RATIO="0.5",
                      PRUNE_OPTIONS="layer_list=1,2,3 positions=renumber")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = "llava-v1.5-tiny-pdrop-L2-ratio0.5-layer_list1.2.3-positionsrenumber"
    record = load(results / "mme" / f"{run}.json")
    meta = load(os.path.join(demo, "MME", "answers", f"{run}.jsonl.meta.json"))
    assert meta["method_options"] == {"layer_list": [1, 2, 3], "positions": "renumber"}
    assert [s["kept"] for s in meta["stages"]] == [288, 144, 72]
    assert record["method"] == "pdrop"
    proc = run_script("mme.sh", tiny_llava, demo, results, METHOD="pdrop", RATIO="0.5", PRUNE_OPTIONS="layer_list")
    assert proc.returncode != 0 and "PRUNE_OPTIONS: 'layer_list' is not NAME=VALUE" in proc.stderr


def _shell_list(name):
    text = open(os.path.join(os.path.dirname(__file__), "..", "scripts", "eval", "_common.sh")).read()
    return set(re.search(rf'^{name}="([^"]*)"', text, re.M).group(1).split())


def test_the_scripts_know_which_methods_run_at_the_vision_stage_and_which_are_adaptive():
    """The scripts default LAYER to 0 for vision-stage methods and allow no budget for adaptive ones: their
    lists must be the registry's."""
    from entropyprune.methods import METHODS
    from entropyprune.options import build_options

    vision = {name for name, spec in METHODS.items() if spec.stage == "vision"}
    adaptive = {name for name, spec in METHODS.items()
                if spec.adaptive is not None and spec.adaptive(build_options(name, spec.options, {}))}
    assert _shell_list("VISION_METHODS") == vision
    assert _shell_list("ADAPTIVE_METHODS") == adaptive


def test_a_vision_stage_method_through_the_scripts(tiny_llava, demo, tmp_path):
    # CDPruner reads each question's instruction and CLIP's text tower (the tiny CLIP is a full CLIPModel).
    results = tmp_path / "results"
    proc = run_script("mme.sh", tiny_llava, demo, results, METHOD="cdpruner", KEEP="16")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = "llava-v1.5-tiny-cdpruner-L0-keep16"
    meta = load(os.path.join(demo, "MME", "answers", f"{run}.jsonl.meta.json"))
    assert (meta["layer"], meta["kept_tokens"], meta["method"]) == (0, 16, "cdpruner")
    assert load(results / "mme" / f"{run}.json")["method"] == "cdpruner"


def test_problems_seen_before_inference_stop_the_script_before_it(tiny_llava, demo, tmp_path):
    # Each stops in well under the time it takes to load a model, with one message naming the variable.
    results = tmp_path / "results"
    cases = [
        ("mme.sh", {"RUN_NAME": "../escape"}, "RUN_NAME='../escape' is not a plain file name"),
        ("mme.sh", {"RUN_NAME": "a b"}, "is not a plain file name"),
        ("mmvet.sh", {"MMVET_GRADE": "1", "MMVET_API_KEY": ""}, "MMVET_GRADE=1 needs MMVET_API_KEY"),
    ]
    for script, env, message in cases:
        proc = run_script(script, tiny_llava, demo, results, **env)
        assert proc.returncode != 0 and message in proc.stderr, (script, env, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr
    blocked = tmp_path / "file"
    blocked.write_text("")  # a results folder under a file cannot be made
    proc = run_script("mme.sh", tiny_llava, demo, blocked / "results")
    assert proc.returncode != 0 and f"RESULTS_DIR={blocked / 'results'} cannot be written" in proc.stderr
    assert not os.path.exists(os.path.join(demo, "mm-vet", "answers", "llava-v1.5-tiny.jsonl"))


def test_an_adaptive_method_through_the_scripts_records_what_each_image_kept(tiny_llava, demo, tmp_path):
    # PruMerge picks its own count per image: no budget, the tag says "adaptive", the record gives the range.
    results = tmp_path / "results"
    proc = run_script("mme.sh", tiny_llava, demo, results, METHOD="prumerge")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = "llava-v1.5-tiny-prumerge-L0-adaptive"
    answers = read_lines(os.path.join(demo, "MME", "answers", f"{run}.jsonl"))
    counts = [n for line in answers for n in line["metadata"]["kept_tokens"]]
    record = load(results / "mme" / f"{run}.json")
    assert record["kept_per_image"] == {"mean": sum(counts) / len(counts), "min": min(counts), "max": max(counts),
                                        "images": len(counts)}
    assert record["keep"] == record["avg_tokens"] == sum(counts) / len(counts) and 1 < min(counts) < 576
