"""Hand-computed cases for the benchmark scorers, on tiny data built in the real formats."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from llava.eval import (
    EvalInputError,
    eval_mmbench,
    eval_mme,
    eval_mmvet,
    eval_science_qa,
    eval_textvqa,
    read_jsonl,
)
from llava.eval.m4c_evaluator import EvalAIAnswerProcessor, TextVQAAccuracyEvaluator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return str(path)


def answer(qid, text, prompt="", **extra):
    # The answer-line layout of LLaVA's drivers.
    return {"question_id": qid, "prompt": prompt, "text": text, "answer_id": "x", "model_id": "m",
            "metadata": {}, **extra}


def lines_of(out):
    return dict(line.split(": ", 1) for line in out.strip().splitlines() if ": " in line)


# ---------------------------------------------------------------------------------------------- common


def test_read_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"question_id": 1, "text": "x"}\n\n{"question_id": 2, "text": \n')
    with pytest.raises(EvalInputError, match=r"a\.jsonl:3: malformed JSON"):
        read_jsonl(path, "answers file")
    path.write_text('{"question_id": 1}\n')
    with pytest.raises(EvalInputError, match=r"a\.jsonl:1: missing field\(s\) text"):
        read_jsonl(path, "answers file", required=("question_id", "text"))
    with pytest.raises(EvalInputError, match="answers file not found"):
        read_jsonl(tmp_path / "nope.jsonl", "answers file")


def test_cli_module_reports_missing_file_with_exit_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "llava.eval.eval_mme", "--answers-file", str(tmp_path / "none.jsonl"),
         "--mme-dir", str(tmp_path)],
        capture_output=True, text=True, cwd=REPO,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: MME answers file not found")


# ------------------------------------------------------------------------------------------------- MME

SUFFIX = "\nAnswer the question using a single word or phrase."


def build_mme(root):
    """artwork in the images/ + questions_answers_YN/ layout, code_reasoning with files side by side."""
    art = root / "artwork"
    (art / "images").mkdir(parents=True)
    (art / "questions_answers_YN").mkdir()
    for stem, qa in {
        "14777": [("Is this painting by Monet? Please answer yes or no.", "Yes"),
                  ("Is this painting by Goya? Please answer yes or no.", "No")],
        "14778": [("Is this a sculpture? Please answer yes or no.", "Yes"),
                  ("Is this a photo? Please answer yes or no.", "No")],
    }.items():
        (art / "images" / f"{stem}.jpg").write_bytes(b"jpg")
        (art / "questions_answers_YN" / f"{stem}.txt").write_text("".join(f"{q}\t{a}\n" for q, a in qa))
    code = root / "code_reasoning"
    code.mkdir()
    # 0020's first question has MME's double space before the suffix.
    (code / "0020.png").write_bytes(b"png")
    (code / "0020.txt").write_text(
        "Does the code print 3?  Please answer yes or no.\tYes\n"
        "Does the code print 4? Please answer yes or no.\tNo\n"
    )
    (code / "0021.png").write_bytes(b"png")
    (code / "0021.txt").write_text(
        "Is the output 1? Please answer yes or no.\tNo\r\nIs the output 2? Please answer yes or no.\tYes\r\n"
    )
    (root / "readme.txt").write_text("not a category")


def mme_answers(path, include_missing=False):
    recs = [
        answer("artwork/images/14777.jpg", "Yes", "Is this painting by Monet?" + SUFFIX),
        answer("artwork/images/14777.jpg", "No, it is not", "Is this painting by Goya?" + SUFFIX),
        # "maybe..." has neither yes nor no in its first 4 characters: "other", wrong.
        answer("artwork/images/14778.jpg", "Maybe yes", "Is this a sculpture?" + SUFFIX),
        answer("artwork/images/14778.jpg", "no", "Is this a photo?" + SUFFIX),
        answer("code_reasoning/0020.png", "yes", "Does the code print 3?" + SUFFIX),
        # "not sure" starts with "not ", which contains "no": parsed as no, right by MME's rule.
        answer("code_reasoning/0020.png", "Not sure", "Does the code print 4?" + SUFFIX),
        answer("code_reasoning/0021.png", "YES", "Is the output 2?" + SUFFIX),
    ]
    if include_missing:
        recs.append(answer("code_reasoning/0021.png", "No", "Is the output 1?" + SUFFIX))
    return write_jsonl(path, recs)


def test_mme_parse_pred():
    assert eval_mme.parse_pred("Yes") == "yes"
    assert eval_mme.parse_pred("no") == "no"
    assert eval_mme.parse_pred("Yes, it is.") == "yes"
    assert eval_mme.parse_pred("Nope") == "no"
    assert eval_mme.parse_pred("I think yes") == "other"  # only the first 4 characters count
    assert eval_mme.parse_pred(" yes") == "yes"
    assert eval_mme.parse_pred("") == "other"


def test_mme_scores_both_layouts_pairs_and_missing(tmp_path, capsys):
    mme = tmp_path / "MME_Benchmark_release_version"
    build_mme(mme)
    answers = mme_answers(tmp_path / "ckpt.jsonl")
    out_json = tmp_path / "summary.json"
    tool_dir = tmp_path / "eval_tool" / "answers" / "ckpt"
    summary = eval_mme.main(["--answers-file", answers, "--mme-dir", str(mme), "--output-json", str(out_json),
                             "--write-eval-tool-dir", str(tool_dir)])
    printed = capsys.readouterr()
    # artwork: 3/4 questions right (the "other" one wrong), 1/2 images fully right -> 75 + 50.
    art = summary["subtasks"]["artwork"]
    assert (art["correct"], art["questions"], art["images_correct"], art["images"]) == (3, 4, 1, 2)
    assert art["other"] == 1
    assert art["score"] == pytest.approx(125.0)
    # code_reasoning: 0020 both right (double-space match, "Not sure" -> no); 0021 one missing -> 75 + 50.
    code = summary["subtasks"]["code_reasoning"]
    assert (code["correct"], code["missing"], code["images_correct"]) == (3, 1, 1)
    assert code["score"] == pytest.approx(125.0)
    assert summary["perception"] == pytest.approx(125.0)
    assert summary["cognition"] == pytest.approx(125.0)
    assert summary["total"] == pytest.approx(250.0)
    assert summary["missing"] == 1
    assert "1 of 8 MME questions have no answer" in printed.err
    got = lines_of(printed.out)
    assert got["artwork"] == "125.00" and got["code_reasoning"] == "125.00"
    assert got["Perception"] == "125.00" and got["Cognition"] == "125.00" and got["Total"] == "250.00"
    tail = printed.out.strip().splitlines()[-3:]
    assert tail == ["Perception: 125.00", "Cognition: 125.00", "Total: 250.00"]
    assert json.loads(out_json.read_text())["total"] == pytest.approx(250.0)

    # eval_tool files: image, question, gt, prediction; pairs adjacent, missing answer kept (empty).
    art_lines = (tool_dir / "artwork.txt").read_text().splitlines()
    assert art_lines[0] == "14777.jpg\tIs this painting by Monet? Please answer yes or no.\tYes\tYes"
    assert art_lines[1] == "14777.jpg\tIs this painting by Goya? Please answer yes or no.\tNo\tNo, it is not"
    code_lines = (tool_dir / "code_reasoning.txt").read_text().splitlines()
    assert code_lines[0] == "0020.png\tDoes the code print 3?  Please answer yes or no.\tYes\tyes"
    assert code_lines[2] == "0021.png\tIs the output 1? Please answer yes or no.\tNo\t"
    assert len(code_lines) == 4


def test_mme_complete_answers_and_sums(tmp_path, capsys):
    mme = tmp_path / "mme"
    build_mme(mme)
    summary = eval_mme.eval_mme(mme_answers(tmp_path / "a.jsonl", include_missing=True), str(mme))
    assert summary["subtasks"]["code_reasoning"]["score"] == pytest.approx(200.0)
    assert summary["total"] == pytest.approx(325.0)
    assert os.path.exists(tmp_path / "a_scores.json")  # default summary path


def test_mme_errors(tmp_path):
    mme = tmp_path / "mme"
    build_mme(mme)
    unknown = answer("artwork/images/14777.jpg", "Yes", "Unknown?" + SUFFIX)
    bad = write_jsonl(tmp_path / "bad.jsonl", [unknown])
    with pytest.raises(EvalInputError, match=r"bad\.jsonl:1: no MME ground truth"):
        eval_mme.eval_mme(bad, str(mme))
    (mme / "artwork" / "questions_answers_YN" / "14777.txt").write_text("a question without an answer\n")
    with pytest.raises(EvalInputError, match=r"14777\.txt:1: expected 'question<TAB>Yes\|No'"):
        eval_mme.eval_mme(mme_answers(tmp_path / "a.jsonl"), str(mme))
    with pytest.raises(EvalInputError, match="MME folder not found"):
        eval_mme.eval_mme(bad, str(tmp_path / "missing"))


# --------------------------------------------------------------------------------------------- TextVQA


@pytest.mark.parametrize("raw, expected", [
    ("The Two dogs.", "2 dogs"),          # lower-case, article, number word, final period
    ("dont", "don't"),                    # contraction table
    ("Don't", "don't"),
    ("it's", "it 's"),                    # "'s" split off
    ("Coca-Cola!", "coca cola"),          # punctuation not next to a space -> space
    ("yes - no", "yes no"),               # punctuation next to a space -> deleted
    ("(hello)", "hello"),
    ("3.14", "3.14"),                     # period before a digit kept
    ("end.", "end"),
    ("none", "0"),
    ("an apple", "apple"),
    ("What?", "what"),
    ("1,000", "1000"),                    # commas are deleted in the first step
    ("line\nbreak\ttab", "line break tab"),
])
def test_textvqa_normalisation(raw, expected):
    assert EvalAIAnswerProcessor()(raw) == expected


def test_textvqa_punctuation_digit_comma_digit_and_period_quirk():
    proc = EvalAIAnswerProcessor()
    # Called on its own, a digit-comma-digit anywhere makes every punctuation mark vanish.
    assert proc.process_punctuation("1,000") == "1000"
    assert proc.process_punctuation("a-b 1,2") == "ab 12"
    assert proc.process_punctuation("a-b") == "a b"
    # re.UNICODE (32) was passed as the count: only the first 32 of 40 periods go.
    assert proc("." * 40) == "." * 8
    assert proc("a." * 40) == "a" * 32 + "a." * 8


def test_textvqa_soft_accuracy_leave_one_out():
    ev = TextVQAAccuracyEvaluator()
    # m matches among 10: mean over the 10 leave-one-out subsets of min(1, matches/3):
    # m=1: 9 subsets with 1 match -> 9/3/10 = 0.3; m=2: (2*1/3 + 8*2/3)/10 = 0.6;
    # m=3: (3*2/3 + 7*1)/10 = 0.9; m>=4: always >= 3 matches -> 1.0.
    for m, expected in [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)]:
        gts = ["cat"] * m + ["dog"] * (10 - m)
        assert ev.score("Cat.", gts) == pytest.approx(expected)
    with pytest.raises(ValueError, match="exactly 10"):
        ev.score("cat", ["cat"] * 9)


def build_textvqa(tmp_path):
    ann = {"dataset_name": "textvqa", "dataset_type": "val", "data": [
        {"image_id": "003a8ae2ef43b901", "question_id": 34602, "question": "What is the brand?",
         "answers": ["nokia"] * 3 + ["Nokia."] * 2 + ["samsung"] * 5},
        {"image_id": "00c359f294f7dcd9", "question_id": 34603, "question": "How many?",
         "answers": ["two"] * 2 + ["3"] * 8},
        {"image_id": "0122c5279a501df2", "question_id": 34604, "question": "Which word is red?",
         "answers": ["stop"] * 10},
    ]}
    ann_path = tmp_path / "TextVQA_0.5.1_val.json"
    ann_path.write_text(json.dumps(ann))
    res = write_jsonl(tmp_path / "ckpt.jsonl", [
        # 3-line OCR prompt; "Nokia" normalises to "nokia", given by 5 of 10 -> 1.0.
        answer("003a8ae2ef43b901", "Nokia",
               "What is the brand?\nReference OCR token: NOKIA, 5" + SUFFIX),
        # 2-line prompt; "2" matches "two" x2 -> 0.6.
        answer("00c359f294f7dcd9", "2", "How many?" + SUFFIX),
        # legacy prompt; wrong -> 0.
        answer("0122c5279a501df2", "go", "OCR tokens: stop, go Question: Which word is red? Short answer:"),
    ])
    return str(ann_path), res


def test_textvqa_end_to_end(tmp_path, capsys):
    ann, res = build_textvqa(tmp_path)
    summary = eval_textvqa.main(["--annotation-file", ann, "--result-file", res])
    got = lines_of(capsys.readouterr().out)
    assert got["Samples"] == "3"
    assert got["Accuracy"] == f"{100 * 1.6 / 3:.2f}" == "53.33"
    assert summary["accuracy"] == pytest.approx(100 * 1.6 / 3)
    assert json.loads((tmp_path / "ckpt_scores.json").read_text())["samples"] == 3


def test_textvqa_prompt_formats():
    q = eval_textvqa.prompt_to_question
    assert q("Who?\nReference OCR token: \nAnswer the question using a single word or phrase.") == "who?"
    assert q("Reference OCR token: A, B\nWho is it?\nAnswer briefly.") == "who is it?"
    assert q("OCR tokens: a, b Question: What Is It? Short answer:") == "what is it?"
    assert q("Just one line") == "just one line"


def test_textvqa_unmatched_question_names_line(tmp_path):
    ann, _ = build_textvqa(tmp_path)
    res = write_jsonl(tmp_path / "bad.jsonl", [answer("003a8ae2ef43b901", "x", "Other question?\nSuffix")])
    with pytest.raises(EvalInputError, match=r"bad\.jsonl:1: no annotation for image_id='003a8ae2ef43b901'"):
        eval_textvqa.eval_textvqa(ann, res)


# ------------------------------------------------------------------------------------------- ScienceQA


def test_science_qa_parse_rules():
    p = eval_science_qa.parse_answer
    assert p("B") == "B"
    assert p("B. A cat") == "B"
    assert p("The answer is C.") == "C"
    assert p("Because ... The answer is D") == "FAILED"  # the regex needs one more character after it
    assert p("The answer is A. The answer is B.") == "FAILED"  # two matches
    assert p("b") == "FAILED"
    assert p("F. text") == "FAILED"  # F is not an option letter, and no regex match
    assert p("The answer is F.") == "F"
    assert eval_science_qa.answer_index("F", 5) == -1
    assert eval_science_qa.answer_index("C", 2) == -1  # beyond the problem's choices
    assert eval_science_qa.answer_index("C", 3) == 2


def test_science_qa_end_to_end(tmp_path, capsys):
    base = tmp_path / "scienceqa"
    base.mkdir()
    problems = {
        "p1": {"choices": ["x", "y", "z"], "answer": 1, "image": "image.png"},
        "p2": {"choices": ["x", "y"], "answer": 0, "image": "image.png"},
        "p3": {"choices": ["w", "x", "y", "z"], "answer": 2, "image": "image.png"},
        "p4": {"choices": ["x", "y"], "answer": 1, "image": None},
        "p5": {"choices": ["x", "y", "z"], "answer": 0, "image": "image.png"},
        "p6": {"choices": ["x", "y"], "answer": 0, "image": "image.png"},
        "p7": {"choices": ["x", "y"], "answer": 0, "image": None},
    }
    (base / "problems.json").write_text(json.dumps(problems))
    (base / "pid_splits.json").write_text(json.dumps({"test": ["p1", "p2", "p3", "p4", "p5", "p6"],
                                                      "val": ["p7"]}))
    img, txt = "<image>\nQuestion\nA. x\nB. y", "Question\nA. x\nB. y"
    res = write_jsonl(tmp_path / "ans.jsonl", [
        answer("p1", "B", img),                     # exact letter: right
        answer("p2", "A. x", img),                  # "A. " prefix: right
        answer("p3", "The answer is C.", img),      # regex: right
        answer("p4", "The answer is C.", txt),      # C beyond 2 choices: wrong
        answer("p5", "I am not sure", img),         # FAILED: wrong
        # p6 has no answer: FAILED, and an image item by problems.json
        answer("p7", "A", txt),                     # other split: ignored
    ])
    out_file, out_result = tmp_path / "out.jsonl", tmp_path / "result.json"
    summary = eval_science_qa.main(["--base-dir", str(base), "--result-file", res, "--output-file",
                                    str(out_file), "--output-result", str(out_result)])
    printed = capsys.readouterr()
    assert "Total: 6, Correct: 3, Accuracy: 50.00%, IMG-Accuracy: 60.00%" in printed.out
    assert "\nAccuracy: 50.00\n" in printed.out
    assert "\nIMG-Accuracy: 60.00\n" in printed.out
    counts = [summary[k] for k in ("img_total", "img_correct", "missing", "failed")]
    assert counts == [5, 3, 1, 2]
    result = json.loads(out_result.read_text())
    assert set(result) == {"acc", "correct", "count", "results", "outputs"}
    assert result["acc"] == pytest.approx(50.0) and result["correct"] == 3 and result["count"] == 6
    assert result["results"] == {"p1": 1, "p2": 0, "p3": 2, "p4": -1, "p5": -1, "p6": -1}
    assert result["outputs"]["p6"] == "FAILED" and result["outputs"]["p2"] == "A. x"
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [r["parsed_ans"] for r in rows] == ["B", "A", "C", "C", "FAILED", "FAILED"]
    assert [r["correct"] for r in rows] == [True, True, True, False, False, False]
    with pytest.raises(EvalInputError, match="split 'train' not in"):
        eval_science_qa.eval_science_qa(str(base), res, str(out_file), str(out_result), split="train")


# --------------------------------------------------------------------------------------------- MMBench

TSV_HEADER = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "source", "l2-category",
              "comment", "split", "image"]
BIG_IMAGE = "iVBORw0KGgo" + "A" * 300_000  # larger than csv's default field limit


def tsv_row(index, answer_letter, category, options=("cat", "dog", "bird", "fish"), question="What is it?"):
    opts = list(options) + ["nan"] * (4 - len(options))
    return [str(index), question, "nan", *opts, answer_letter, category, "src", "l2", "nan", "dev", BIG_IMAGE]


def write_tsv(path, header, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in [header, *rows]:
            f.write("\t".join(r) + "\n")
    return str(path)


def test_mmbench_extract_letter():
    opts = {"A": "cat", "B": "dog", "C": "A bird", "D": "fish"}
    ex = eval_mmbench.extract_letter
    assert [ex(t, opts) for t in ["A", "B.", "(C)", "D)", " A \n"]] == ["A", "B", "C", "D", "A"]
    assert [ex(t, opts) for t in ["A. cat", "(B) dog", "C: a bird"]] == ["A", "B", "C"]
    texts = ["The answer is C.", "Answer: (D)", "答案是B。", "答案：A"]
    assert [ex(t, opts) for t in texts] == ["C", "D", "B", "A"]
    assert ex("Dog.", opts) == "B" and ex("a bird", opts) == "C"  # the text of exactly one option
    assert ex("A cat is shown", opts) is None  # "A" as an article is not an answer
    assert ex("E", opts) is None  # not one of the row's options
    assert ex("The answer is C", {"A": "x", "B": "y"}) is None
    assert ex("I don't know", opts) is None


def test_mmbench_submission_and_circular_eval(tmp_path, capsys):
    pytest.importorskip("openpyxl")  # the submission xlsx needs it
    rows = [
        tsv_row(0, "A", "X"), tsv_row(1_000_000, "B", "X"), tsv_row(2_000_000, "C", "X"),
        tsv_row(1, "D", "X"), tsv_row(1_000_001, "A", "X"),
        tsv_row(2, "B", "Y", options=("yes", "no"), question='Say "hi"?'),
        tsv_row(3, "A", "Z"),
    ]
    tsv = write_tsv(tmp_path / "mmbench_dev_20230712.tsv", TSV_HEADER, rows)
    res = write_jsonl(tmp_path / "ckpt.jsonl", [
        answer(0, "A", round_id=0), answer(1_000_000, "B."), answer(2_000_000, "(C) bird"),
        answer(1, "D"), answer(1_000_001, "C"),          # one wrong copy: the whole group fails
        answer(2, "The answer is B."),
        # index 3 has no answer: wrong
    ])
    upload = tmp_path / "upload"
    summary = eval_mmbench.main(["--annotation-file", tsv, "--result-file", res, "--upload-dir", str(upload),
                                 "--experiment", "ckpt"])
    printed = capsys.readouterr()
    got = lines_of(printed.out)
    # rows: 5 of 7 right; groups: {0} right, {1} wrong, {2} right, {3} missing -> 2 of 4.
    assert got["CircularEval"] == "50.00"
    assert got["SingleEval"] == f"{500 / 7:.2f}" == "71.43"
    assert summary["per_category"] == {
        "X": {"groups": 2, "correct": 1, "accuracy": 50.0},
        "Y": {"groups": 1, "correct": 1, "accuracy": 100.0},
        "Z": {"groups": 1, "correct": 0, "accuracy": 0.0},
    }
    assert summary["missing"] == 1
    assert "1 of 7 MMBench questions have no answer" in printed.err

    from openpyxl import load_workbook

    ws = load_workbook(upload / "ckpt.xlsx").active
    table = [list(r) for r in ws.iter_rows(values_only=True)]
    assert table[0] == ["index", "question", "A", "B", "C", "D", "prediction", "answer", "split"]
    assert table[1] == [0, "What is it?", "cat", "dog", "bird", "fish", "A", "A", "dev"]
    assert table[6] == [2, 'Say "hi"?', "yes", "no", None, None, "The answer is B.", "B", "dev"]
    assert table[7][6] is None  # no answer -> empty prediction cell
    assert [r[0] for r in table[1:]] == [0, 1_000_000, 2_000_000, 1, 1_000_001, 2, 3]


def test_mmbench_cn_and_test_split_without_answers(tmp_path, capsys):
    pytest.importorskip("openpyxl")  # the submission xlsx needs it
    header = [c for c in TSV_HEADER if c != "answer"]
    row = tsv_row(7, "A", "属性", options=("猫", "狗"), question="这是什么？")
    del row[7]  # the answer column
    tsv = write_tsv(tmp_path / "mmbench_test_cn.tsv", header, [row])
    res = write_jsonl(tmp_path / "cn.jsonl", [answer(7, "答案是B")])
    summary = eval_mmbench.eval_mmbench(tsv, res, str(tmp_path / "up"), "cn")
    assert "circular_eval" not in summary
    from openpyxl import load_workbook

    table = [list(r) for r in load_workbook(tmp_path / "up" / "cn.xlsx").active.iter_rows(values_only=True)]
    assert table == [["index", "question", "A", "B", "C", "D", "prediction", "split"],
                     [7, "这是什么？", "猫", "狗", None, None, "答案是B", "dev"]]
    # With an answer column the Chinese answer is parsed.
    dev_row = tsv_row(7, "B", "属性", options=("猫", "狗"))
    tsv2 = write_tsv(tmp_path / "mmbench_dev_cn.tsv", TSV_HEADER, [dev_row])
    assert eval_mmbench.eval_mmbench(tsv2, res, str(tmp_path / "up"), "cn2")["circular_eval"] == 100.0
    stored = json.loads((tmp_path / "cn_scores.json").read_text(encoding="utf-8"))
    assert stored["per_category"] == {"属性": {"groups": 1, "correct": 1, "accuracy": 100.0}}


def test_mmbench_errors(tmp_path):
    tsv = write_tsv(tmp_path / "t.tsv", TSV_HEADER, [tsv_row(0, "A", "X"), tsv_row(1, "A", "X")[:5]])
    res = write_jsonl(tmp_path / "a.jsonl", [answer(0, "A")])
    with pytest.raises(EvalInputError, match=r"t\.tsv:3: 5 fields, header has 14"):
        eval_mmbench.eval_mmbench(tsv, res, str(tmp_path), "x")
    tsv = write_tsv(tmp_path / "t.tsv", TSV_HEADER, [tsv_row(0, "A", "X")])
    res = write_jsonl(tmp_path / "a.jsonl", [answer(99, "A")])
    # An index that is not a row is an error, as every unknown answer is (it used to be one only when no
    # answer matched).
    with pytest.raises(EvalInputError, match=r"a\.jsonl:1: index 99 round 0 is not a question of .*t\.tsv"):
        eval_mmbench.eval_mmbench(tsv, res, str(tmp_path), "x")


# ---------------------------------------------------------------------------------------------- MM-Vet

MMVET = {
    "v1_0": {"imagename": "v1_0.png", "capability": ["rec", "ocr"], "question": "What is written?",
             "answer": "12<AND>40"},
    "v1_1": {"imagename": "v1_1.png", "capability": ["ocr"], "question": "Which brand?",
             "answer": "nike<OR>NIKE"},
    "v1_2": {"imagename": "v1_2.png", "capability": ["rec"], "question": "What animal?", "answer": "cat"},
    "v1_3": {"imagename": "v1_3.png", "capability": ["math"], "question": "2+2?", "answer": "4"},
}


def mmvet_files(tmp_path, text0="12 and 40"):
    res = write_jsonl(tmp_path / "ckpt.jsonl", [
        answer(0, text0, "What is written?"),
        answer(1, "Nike", "Which brand?"),
        answer(2, "A dog", "What animal?"),
    ])
    mm = tmp_path / "mm-vet.json"
    mm.write_text(json.dumps(MMVET))
    return res, str(mm)


def test_mmvet_submission(tmp_path, capsys):
    res, _ = mmvet_files(tmp_path)
    out = tmp_path / "results" / "ckpt.json"
    eval_mmvet.main(["--result-file", res, "--output", str(out)])
    assert capsys.readouterr().out.strip() == "Answers: 3"
    text = out.read_text()
    assert json.loads(text) == {"v1_0": "12 and 40", "v1_1": "Nike", "v1_2": "A dog"}
    assert text.startswith('{\n  "v1_0": ')  # indent 2


class FakeJudge:
    """A ChatFn: grades by question, returning garbage first for v1_1 and always for v1_2."""

    def __init__(self):
        self.calls = []

    def __call__(self, messages, temperature):
        content = messages[0]["content"]
        self.calls.append((content, temperature))
        if "\nWhat is written? |" in content:
            return "0.5", "judge-1"
        if "\nWhich brand? |" in content:
            return ("1.0" if content.endswith(eval_mmvet.RETRY_NOTE) else "Correct"), "judge-1"
        return "n/a", "judge-1"


def test_mmvet_grading_with_callable_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MMVET_MODEL", "judge")
    res, mm = mmvet_files(tmp_path)
    out = str(tmp_path / "ckpt.json")
    judge = FakeJudge()
    s = eval_mmvet.eval_mmvet(res, out, grade=True, mmvet_json=mm, chat=judge)
    # v1_0 0.5, v1_1 1.0 after one retry, v1_2 0 after 5 retries, v1_3 no answer -> 0.
    assert s["total"] == pytest.approx(100 * 1.5 / 4)
    assert s["capabilities"] == pytest.approx({"rec": 25.0, "ocr": 75.0, "math": 0.0})
    assert list(s["capabilities"])[:2] == ["rec", "ocr"]  # most common first
    assert s["missing"] == 1 and s["unparsed_grades"] == 1
    temps = [t for c, t in judge.calls if "What animal?" in c]
    assert temps == [0.0, 0.0, 0.5, 1.0, 1.5, 2.0]
    assert [t for c, t in judge.calls if "Which brand?" in c] == [0.0, 0.0]
    first = judge.calls[0][0]
    assert first.startswith(eval_mmvet.GRADER_PROMPT)
    assert first.endswith("\nWhat is written? | 12 <AND> 40 | 12 and 40 | ")
    assert len(judge.calls) == 1 + 2 + 6

    # Rerun: everything comes from the cache.
    again = FakeJudge()
    s2 = eval_mmvet.eval_mmvet(res, out, grade=True, mmvet_json=mm, chat=again)
    assert again.calls == [] and s2["total"] == s["total"] and s2["newly_graded"] == 0
    # A changed prediction is graded anew; the others stay cached.
    res, mm = mmvet_files(tmp_path, text0="40")
    third = FakeJudge()
    eval_mmvet.eval_mmvet(res, out, grade=True, mmvet_json=mm, chat=third)
    assert len(third.calls) == 1 and "| 40 | " in third.calls[0][0]
    assert os.path.exists(tmp_path / "ckpt_grade_cache.json")
    assert json.loads((tmp_path / "ckpt_scores.json").read_text())["total"] == pytest.approx(37.5)


class _JudgeHandler(BaseHTTPRequestHandler):
    requests: list = []
    statuses: list = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append((self.path, dict(self.headers), body))
        status = type(self).statuses.pop(0) if type(self).statuses else 200
        payload = {"model": "fake-judge", "choices": [{"message": {"role": "assistant", "content": "0.7"}}]}
        data = json.dumps(payload if status == 200 else {"error": "nope"}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_server(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    _JudgeHandler.requests, _JudgeHandler.statuses = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _JudgeHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_mmvet_grading_over_http(tmp_path, capsys, monkeypatch, judge_server):
    monkeypatch.setenv("MMVET_API_BASE", judge_server)
    monkeypatch.setenv("MMVET_API_KEY", "sk-test")
    monkeypatch.setenv("MMVET_MODEL", "gpt-4-0613")
    res, mm = mmvet_files(tmp_path)
    out = str(tmp_path / "r.json")
    eval_mmvet.main(["--result-file", res, "--output", out, "--grade", "--mmvet-json", mm])
    got = lines_of(capsys.readouterr().out)
    assert got["Total"] == f"{100 * 2.1 / 4:.2f}"  # three answers at 0.7, one missing
    assert got["ocr"] == "70.00" and got["rec"] == "70.00" and got["math"] == "0.00"
    assert len(_JudgeHandler.requests) == 3
    path, headers, body = _JudgeHandler.requests[0]
    assert path == "/v1/chat/completions"
    assert headers["Authorization"] == "Bearer sk-test"
    assert body["model"] == "gpt-4-0613" and body["temperature"] == 0.0 and body["max_tokens"] == 3
    assert body["messages"][0]["role"] == "user"


def test_openai_chat_retries_rate_limits_and_stops_on_auth_errors(judge_server):
    _JudgeHandler.statuses = [429, 503]
    slept = []
    chat = eval_mmvet.openai_chat(judge_server, "k", "m", sleep=slept.append)
    assert chat([{"role": "user", "content": "hi"}], 0.0) == ("0.7", "fake-judge")
    assert slept == [2.0, 4.0]
    _JudgeHandler.statuses = [401]
    with pytest.raises(EvalInputError, match="HTTP 401"):
        chat([{"role": "user", "content": "hi"}], 0.0)


def test_mmvet_grade_needs_mmvet_json_and_key(tmp_path, monkeypatch):
    res, mm = mmvet_files(tmp_path)
    with pytest.raises(EvalInputError, match="--mmvet-json"):
        eval_mmvet.eval_mmvet(res, str(tmp_path / "o.json"), grade=True)
    for var in ("MMVET_API_BASE", "MMVET_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(EvalInputError, match="MMVET_API_KEY"):
        eval_mmvet.eval_mmvet(res, str(tmp_path / "o.json"), grade=True, mmvet_json=mm)
