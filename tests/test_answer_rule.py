"""Every scorer applies the one answer rule of `llava.eval.answer_index`, on the demo data.

For each benchmark an answers file is built from the demo question file, right or wrong by construction
(`right`), and each case's `expected` computes the headline score from those per-question results by hand.
Then: (a) one line repeated -> an error naming both lines and the question; (b) an answer to an unknown
question -> an error naming its line; (c) one right answer removed -> `missing == 1` and the headline is
`expected` with that question wrong (and lower than the complete run's); (d) an empty file -> an error.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Callable

import pytest

from llava.eval import (
    EvalInputError,
    eval_ai2d,
    eval_gqa,
    eval_mmbench,
    eval_mme,
    eval_mmmu,
    eval_mmstar,
    eval_mmvet,
    eval_ocrbench,
    eval_pope,
    eval_science_qa,
    eval_textvqa,
)
from llava.eval.eval_mmbench import read_tsv, row_options
from llava.eval.vlmeval_tsv import choices, read_questions
from llava.tools import make_demo_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUFFIX = "\nAnswer the question using a single word or phrase."


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("eval"))
    make_demo_data.build(root, seed=0, mme_images=1)
    return root


def read_lines(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_answers(path, lines):
    with open(path, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
    return str(path)


def answer(qid, text, prompt="", **extra):
    return {"question_id": qid, "prompt": prompt, "text": text, "answer_id": "x", "model_id": "m", "metadata": {},
            **extra}


def pattern(n):
    """Which questions get a right answer: all but every third from the second on."""
    return [i % 3 != 1 for i in range(n)]


def pct(num, den):
    return 100.0 * num / den


def other_letter(letter, letters):
    return next(x for x in letters if x != letter)


@dataclass
class Case:
    name: str  # the benchmark as warnings name it
    lines: list  # complete answers, in question order
    right: list  # per question: is its answer right
    expected: Callable[[list], float]  # per-question results -> headline, by hand
    score: Callable[[str, str], dict]  # (answers file, scratch folder) -> summary
    headline: Callable[[dict], float]
    key: Callable[[dict], str]  # how the error names a line's question
    unknown_id: object  # a question id the benchmark does not have


# -------------------------------------------------------------------------------------------- the cases


def mme_case(demo):
    mme_dir = os.path.join(demo, "MME", "MME_Benchmark_release_version")
    gt = {}
    for category in os.listdir(mme_dir):
        folder = os.path.join(mme_dir, category)
        qa = os.path.join(folder, "questions_answers_YN")
        qa = qa if os.path.isdir(qa) else folder
        for txt in (n for n in os.listdir(qa) if n.endswith(".txt")):
            for row in open(os.path.join(qa, txt), encoding="utf-8").read().splitlines():
                question, label = row.split("\t")
                gt[(category, txt[:-4], question)] = label
    questions = read_lines(os.path.join(demo, "MME", "llava_mme.jsonl"))
    lines, right, where = [], pattern(len(questions)), []
    for q, ok in zip(questions, right, strict=True):
        category, stem = q["category"], os.path.splitext(os.path.basename(q["question_id"]))[0]
        question = q["text"].replace(SUFFIX, "")
        # Some MME questions have two spaces before the suffix, as in the release.
        label = gt.get((category, stem, f"{question} Please answer yes or no."),
                       gt.get((category, stem, f"{question}  Please answer yes or no.")))
        lines.append(answer(q["question_id"], label if ok else {"Yes": "No", "No": "Yes"}[label], q["text"]))
        where.append((category, stem))

    def expected(flags):
        # Per subtask: 100 * right questions / questions + 100 * fully right images / images; Total sums them.
        questions, images = defaultdict(list), defaultdict(lambda: defaultdict(list))
        for (category, stem), ok in zip(where, flags, strict=True):
            questions[category].append(ok)
            images[category][stem].append(ok)
        return sum(pct(sum(qs), len(qs)) + pct(sum(all(v) for v in images[c].values()), len(images[c]))
                   for c, qs in questions.items())

    return Case("MME", lines, right, expected, lambda res, tmp: eval_mme.eval_mme(res, mme_dir),
                lambda s: s["total"], lambda line: line["prompt"].replace(SUFFIX, ""), "existence/99999.jpg")


def textvqa_case(demo):
    ann_file = os.path.join(demo, "textvqa", "TextVQA_0.5.1_val.json")
    ann = {(a["image_id"], a["question"].lower()): a for a in json.load(open(ann_file))["data"]}
    questions = read_lines(os.path.join(demo, "textvqa", "llava_textvqa_val_v051_ocr.jsonl"))
    right = pattern(len(questions))
    lines = []
    for q, ok in zip(questions, right, strict=True):
        answers = ann[(q["question_id"], q["text"].split("\n")[0].lower())]["answers"]
        gold = Counter(answers).most_common(1)[0][0]  # given by 4 or more of the 10: accuracy 1
        lines.append(answer(q["question_id"], gold if ok else "zzz", q["text"]))
    return Case("TextVQA", lines, right, lambda flags: pct(sum(flags), len(flags)),
                lambda res, tmp: eval_textvqa.eval_textvqa(ann_file, res), lambda s: s["accuracy"],
                lambda line: line["question_id"], "999999")


def sqa_case(demo):
    base = os.path.join(demo, "scienceqa")
    problems = json.load(open(os.path.join(base, "problems.json")))
    questions = json.load(open(os.path.join(base, "llava_test_CQM-A.json")))
    right = pattern(len(questions))
    lines = []
    for q, ok in zip(questions, right, strict=True):
        prob = problems[q["id"]]
        letters = "ABCDE"[:len(prob["choices"])]
        gold = letters[prob["answer"]]
        lines.append(answer(q["id"], gold if ok else other_letter(gold, letters), q["conversations"][0]["value"]))
    with_image = [bool(problems[q["id"]]["image"]) for q in questions]

    def expected(flags):  # IMG-Accuracy: over the problems with an image
        img = [ok for ok, has in zip(flags, with_image, strict=True) if has]
        return pct(sum(img), len(img))

    def score(res, tmp):
        return eval_science_qa.eval_science_qa(base, res, os.path.join(tmp, "out.jsonl"),
                                               os.path.join(tmp, "result.json"))

    return Case("ScienceQA test", lines, right, expected, score, lambda s: s["img_accuracy"],
                lambda line: line["question_id"], "999999")


def mmbench_case(demo):
    tsv = os.path.join(demo, "mmbench", "mmbench_dev_20230712.tsv")
    _, rows = read_tsv(tsv)
    right = pattern(len(rows))
    lines = []
    for row, ok in zip(rows, right, strict=True):
        gold, letters = row["answer"], list(row_options(row))
        lines.append(answer(int(row["index"]), gold if ok else other_letter(gold, letters), "", round_id=0))
    groups = [int(row["index"]) % 1_000_000 for row in rows]

    def expected(flags):  # CircularEval: a group counts when every circular copy is right
        by_group = defaultdict(list)
        for group, ok in zip(groups, flags, strict=True):
            by_group[group].append(ok)
        return pct(sum(all(v) for v in by_group.values()), len(by_group))

    def score(res, tmp):
        return eval_mmbench.eval_mmbench(tsv, res, os.path.join(tmp, "upload"), "run")

    return Case("MMBench", lines, right, expected, score, lambda s: s["circular_eval"],
                lambda line: f"index {line['question_id']} round 0", 999999)


def mmvet_case(demo):
    folder = os.path.join(demo, "mm-vet")
    questions = read_lines(os.path.join(folder, "llava-mm-vet.jsonl"))
    right = pattern(len(questions))
    lines = [answer(q["question_id"], "RIGHT" if ok else "WRONG", q["text"])
             for q, ok in zip(questions, right, strict=True)]

    def judge(messages, temperature):  # the prediction is the last row's third cell
        prediction = messages[0]["content"].rsplit("\n", 1)[-1].split(" | ")[2]
        return ("1.0" if prediction == "RIGHT" else "0.0"), "judge"

    def score(res, tmp):
        return eval_mmvet.eval_mmvet(res, os.path.join(tmp, "results.json"), grade=True,
                                     mmvet_json=os.path.join(folder, "mm-vet.json"), chat=judge,
                                     cache_file=os.path.join(tmp, "cache.json"))

    return Case("MM-Vet", lines, right, lambda flags: pct(sum(flags), len(flags)), score, lambda s: s["total"],
                lambda line: f"v1_{line['question_id']}", 999999)


def gqa_case(demo):
    qfile = os.path.join(demo, "gqa", "llava_gqa_testdev_balanced.jsonl")
    ann_file = os.path.join(demo, "gqa", "data", "testdev_balanced_questions.json")
    ann = json.load(open(ann_file))
    questions = read_lines(qfile)
    right = pattern(len(questions))
    lines = [answer(q["question_id"], ann[q["question_id"]]["answer"] if ok else "zzz", q["text"])
             for q, ok in zip(questions, right, strict=True)]
    return Case("GQA", lines, right, lambda flags: pct(sum(flags), len(flags)),
                lambda res, tmp: eval_gqa.eval_gqa(qfile, ann_file, res), lambda s: s["overall"],
                lambda line: line["question_id"], "999999")


def pope_case(demo):
    folder = os.path.join(demo, "pope")
    qfile = os.path.join(folder, "llava_pope_test.jsonl")
    questions = read_lines(qfile)
    labels = {split: [x["label"] for x in read_lines(os.path.join(folder, "coco", f"coco_pope_{split}.json"))]
              for split in {q["category"] for q in questions}}
    seen = Counter()
    gold = []
    for q in questions:  # the k-th question of a split goes with the k-th label of its file
        gold.append(labels[q["category"]][seen[q["category"]]])
        seen[q["category"]] += 1
    right = pattern(len(questions))
    lines = [answer(q["question_id"], (label if ok else {"yes": "no", "no": "yes"}[label]).capitalize(), q["text"])
             for q, label, ok in zip(questions, gold, right, strict=True)]
    splits = [q["category"] for q in questions]

    def expected(flags):
        # A wrong answer and a missing one are both the opposite of the label; the headline is the mean F1.
        f1s = []
        for split in labels:
            pairs = [(label if ok else {"yes": "no", "no": "yes"}[label], label)
                     for s, label, ok in zip(splits, gold, flags, strict=True) if s == split]
            tp = sum(p == g == "yes" for p, g in pairs)
            fp = sum(p == "yes" and g == "no" for p, g in pairs)
            fn = sum(p == "no" and g == "yes" for p, g in pairs)
            precision = pct(tp, tp + fp) if tp + fp else 0.0
            recall = pct(tp, tp + fn) if tp + fn else 0.0
            f1s.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
        return sum(f1s) / len(f1s)

    return Case("POPE", lines, right, expected,
                lambda res, tmp: eval_pope.eval_pope(os.path.join(folder, "coco"), qfile, res),
                lambda s: s["overall"], lambda line: str(line["question_id"]), 999999)


def mcq_case(demo, name, path, module):
    tsv = os.path.join(demo, path)
    _, rows = read_questions(tsv, name)
    right = pattern(len(rows))
    lines = [answer(int(r["index"]), r["answer"] if ok else other_letter(r["answer"], list(choices(r))))
             for r, ok in zip(rows, right, strict=True)]
    return Case(name, lines, right, lambda flags: pct(sum(flags), len(flags)),
                lambda res, tmp: module.main(["--annotation-file", tsv, "--result-file", res]),
                lambda s: s["overall"], lambda line: f"question_id {line['question_id']}", 999999)


def ocrbench_case(demo):
    tsv = os.path.join(demo, "ocrbench", "OCRBench.tsv")
    _, rows = read_questions(tsv, "OCRBench")
    right = pattern(len(rows))
    lines = [answer(int(r["index"]), ast.literal_eval(r["answer"])[0] if ok else "zzz")
             for r, ok in zip(rows, right, strict=True)]
    return Case("OCRBench", lines, right, lambda flags: float(sum(flags)),  # the Final Score counts right ones
                lambda res, tmp: eval_ocrbench.eval_ocrbench(tsv, res), lambda s: s["overall"],
                lambda line: f"question_id {line['question_id']}", 999999)


def mmmu_case(demo):
    tsv = os.path.join(demo, "mmmu", "MMMU_DEV_VAL.tsv")
    _, rows = read_questions(tsv, "MMMU")
    right = pattern(len(rows))
    lines = []
    for r, ok in zip(rows, right, strict=True):
        gold = r["answer"]
        if choices(r):
            text = gold if ok else other_letter(gold, list(choices(r)))
        else:
            text = (ast.literal_eval(gold)[0] if gold.startswith("[") else gold) if ok else "zzz"
        lines.append(answer(int(r["index"]), text))
    validation = [r["split"] == "validation" for r in rows]

    def expected(flags):  # the headline is the validation split's accuracy
        val = [ok for ok, v in zip(flags, validation, strict=True) if v]
        return pct(sum(val), len(val))

    return Case("MMMU", lines, right, expected, lambda res, tmp: eval_mmmu.eval_mmmu(tsv, res),
                lambda s: s["overall"], lambda line: f"question_id {line['question_id']}", 999999)


CASES = {
    "mme": mme_case,
    "textvqa": textvqa_case,
    "scienceqa": sqa_case,
    "mmbench": mmbench_case,
    "mmvet": mmvet_case,
    "gqa": gqa_case,
    "pope": pope_case,
    "mmstar": lambda demo: mcq_case(demo, "MMStar", "mmstar/MMStar.tsv", eval_mmstar),
    "ai2d": lambda demo: mcq_case(demo, "AI2D", "ai2d/AI2D_TEST.tsv", eval_ai2d),
    "ocrbench": ocrbench_case,
    "mmmu": mmmu_case,
}


@pytest.fixture(params=sorted(CASES))
def case(request, demo):
    return CASES[request.param](demo)


def run(case, tmp_path, name, lines):
    scratch = tmp_path / name
    scratch.mkdir()
    return case.score(write_answers(scratch / f"{name}.jsonl", lines), str(scratch))


# -------------------------------------------------------------------------------------------- the rule


def test_complete_run_scores_the_constructed_results(case, tmp_path, capsys):
    summary = run(case, tmp_path, "complete", case.lines)
    assert summary["missing"] == 0
    assert case.headline(summary) == pytest.approx(case.expected(case.right))
    assert "no answer" not in capsys.readouterr().err


def test_a_duplicated_line_names_both_lines(case, tmp_path):
    j, n = 1, len(case.lines)
    path = write_answers(tmp_path / "dup.jsonl", case.lines + [case.lines[j]])  # identical: still a second writer
    with pytest.raises(EvalInputError) as err:
        case.score(path, str(tmp_path))
    message = str(err.value)
    assert f"{path}:{j + 1} and {path}:{n + 1} both answer " in message
    assert case.key(case.lines[j]) in message
    assert "two runs wrote into this file" in message and "llava.eval.driver merge" in message


def test_an_unknown_question_is_an_error(case, tmp_path):
    stray = {**case.lines[0], "question_id": case.unknown_id}
    path = write_answers(tmp_path / "unknown.jsonl", case.lines + [stray])
    with pytest.raises(EvalInputError) as err:
        case.score(path, str(tmp_path))
    message = str(err.value)
    assert message.startswith(f"{path}:{len(case.lines) + 1}: ")
    assert "99999" in message and "the wrong answers file or another benchmark" in message


def test_a_missing_answer_counts_as_wrong(case, tmp_path, capsys):
    complete = case.headline(run(case, tmp_path, "complete", case.lines))
    # The first right answer whose loss shows in the headline (MMMU's dev row does not count in it).
    drop = next(i for i, ok in enumerate(case.right)
                if ok and case.expected([f and k != i for k, f in enumerate(case.right)]) != complete)
    capsys.readouterr()
    summary = run(case, tmp_path, "partial", case.lines[:drop] + case.lines[drop + 1:])
    flags = [ok and i != drop for i, ok in enumerate(case.right)]
    assert summary["missing"] == 1
    assert case.headline(summary) == pytest.approx(case.expected(flags))
    assert case.headline(summary) < complete
    partial = str(tmp_path / "partial" / "partial.jsonl")
    warning = (f"warning: 1 of {len(case.lines)} {case.name} questions have no answer in {partial}; "
               "they count as wrong.\n")
    assert warning in capsys.readouterr().err


def test_an_empty_answers_file_is_an_error(case, tmp_path):
    path = write_answers(tmp_path / "empty.jsonl", [])
    with pytest.raises(EvalInputError, match=rf"^{re.escape(path)} holds no answers; run llava\.eval\."):
        case.score(path, str(tmp_path))


# ------------------------------------------------------------------------------------------- specifics


def test_textvqa_copies_of_a_right_answer_are_an_error_not_extra_credit(demo, tmp_path):
    # One right answer among five questions is 20.00; five copies of it used to count five times (60.00).
    case = textvqa_case(demo)
    first = case.lines[0]
    assert case.headline(run(case, tmp_path, "one", [first] + [{**x, "text": "zzz"} for x in case.lines[1:]])) \
        == pytest.approx(20.0)
    with pytest.raises(EvalInputError, match=r"five\.jsonl:1 and .*five\.jsonl:2 both answer image_id="):
        run(case, tmp_path, "five", [first] * 5 + [{**x, "text": "zzz"} for x in case.lines[1:]])


def test_answers_outside_the_scored_set_are_ignored_and_counted(demo, tmp_path, capsys):
    # ScienceQA scores one split: an answer to a problem of another split is ignored, not an error.
    case = sqa_case(demo)
    base = tmp_path / "scienceqa"
    base.mkdir()
    problems = json.load(open(os.path.join(demo, "scienceqa", "problems.json")))
    splits = json.load(open(os.path.join(demo, "scienceqa", "pid_splits.json")))
    other = "900"
    problems[other] = {**problems[case.lines[0]["question_id"]], "split": "val"}
    splits["val"] = [other]
    (base / "problems.json").write_text(json.dumps(problems))
    (base / "pid_splits.json").write_text(json.dumps(splits))
    case.score = lambda res, tmp: eval_science_qa.eval_science_qa(
        str(base), res, os.path.join(tmp, "out.jsonl"), os.path.join(tmp, "result.json"))
    summary = run(case, tmp_path, "extra", case.lines + [answer(other, "A", "")])
    assert (summary["ignored"], summary["missing"]) == (1, 0)
    assert summary["img_accuracy"] == pytest.approx(case.expected(case.right))
    assert "1 answers in" in capsys.readouterr().err
    # ... but a file holding only such answers scores nothing: an error, as an empty file is.
    with pytest.raises(EvalInputError, match=r"holds no answers to the 'test' split"):
        run(case, tmp_path, "only", [answer(other, "A", "")])


def test_mmbench_rotated_rounds_are_ignored_and_counted(demo, tmp_path):
    case = mmbench_case(demo)
    rotated = [{**line, "round_id": 1, "text": "A"} for line in case.lines]
    summary = run(case, tmp_path, "rounds", case.lines + rotated)
    assert (summary["ignored"], summary["missing"]) == (len(case.lines), 0)
    assert summary["circular_eval"] == pytest.approx(case.expected(case.right))


def test_cli_duplicate_is_one_error_line_and_exit_2(demo, tmp_path):
    case = gqa_case(demo)
    path = write_answers(tmp_path / "dup.jsonl", case.lines + [case.lines[0]])
    proc = subprocess.run([sys.executable, "-m", "llava.eval.eval_gqa", "--question-file",
                           os.path.join(demo, "gqa", "llava_gqa_testdev_balanced.jsonl"), "--annotation-file",
                           os.path.join(demo, "gqa", "data", "testdev_balanced_questions.json"), "--result-file",
                           path], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith(f"error: {path}:1 and {path}:{len(case.lines) + 1} both answer question_id ")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
