"""Hand-computed cases for the GQA, POPE, MMStar, AI2D, OCRBench and MMMU scorers, on tiny files in the real
formats. Each tricky rule of the official tools has a case whose expected value was worked out by hand."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys

import pytest

from llava.eval import EvalInputError, eval_ai2d, eval_gqa, eval_mmmu, eval_mmstar, eval_ocrbench, eval_pope
from llava.eval.matching import can_infer
from llava.eval.mmmu_parsing import extract_numbers, normalize, open_correct, parse_multi_choice, parse_open
from llava.eval.vlmeval_tsv import read_questions

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return str(path)


def answers(path, texts: dict):
    """An answers file of the drivers' layout: question_id -> text."""
    return write_jsonl(path, [{"question_id": qid, "prompt": "", "text": text, "answer_id": "x", "model_id": "m",
                               "metadata": {}} for qid, text in texts.items()])


def png_b64() -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 3), (200, 10, 10)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


IMG = png_b64()


def write_tsv(path, columns, rows):
    with open(path, "w", encoding="utf-8") as f:
        f.write("\t".join(columns) + "\n")
        for r in rows:
            f.write("\t".join(str(r.get(c, "")) for c in columns) + "\n")
    return str(path)


# --------------------------------------------------------------------------------------- VLMEvalKit TSVs


def test_tsv_image_cells_references_lists_and_rows_without_image(tmp_path):
    two = repr([IMG, IMG + "AA"])
    tsv = write_tsv(tmp_path / "t.tsv", ("index", "question", "A", "B", "C", "image"), [
        {"index": 0, "question": "q0", "A": "x", "B": "NaN", "C": "z", "image": IMG},
        {"index": 1, "question": "q1", "A": "x", "image": "0"},  # shares row 0's image
        {"index": 2, "question": "q2", "A": "x", "image": ""},  # no image: dropped, as VLMEvalKit's skip_noimg
        {"index": 3, "question": "q3", "A": "x", "image": two},
    ])
    _, rows = read_questions(tsv, "test TSV")
    assert [r["index"] for r in rows] == ["0", "1", "3"]
    assert rows[1]["_images"] == [IMG] and rows[2]["_images"] == [IMG, IMG + "AA"]
    from llava.eval.vlmeval_tsv import choices

    assert choices(rows[0]) == {"A": "x", "C": "z"}  # "NaN" is missing to pandas; C still counts (no stop)
    bad = write_tsv(tmp_path / "b.tsv", ("index", "question", "image"), [{"index": 0, "question": "q", "image": "7"}])
    with pytest.raises(EvalInputError, match=r"b\.tsv: row index 0: the image cell '7' is neither"):
        read_questions(bad, "test TSV")


# ----------------------------------------------------------------------------------------- can_infer


OPTS = {"A": "cat", "B": "dog", "C": "bird", "D": "fish"}


@pytest.mark.parametrize("text, expected", [
    ("B", "B"),
    ("(C)", "C"),  # brackets become spaces
    ("The answer is B.", "B"),
    ("I think it is C", "C"),  # a lone letter among the last four words
    # "A" is the first of 12 words: too early to be the choice, and the text is too long for the option texts.
    ("A cat is sitting on the mat and it looks very happy today", None),
    ("A or B", None),  # two letters: no option match, and "A or B" holds no option text
    ("The correct answer is **b**", "B"),  # the verbose pattern is case-insensitive
    ("the answer is a dog", "A"),  # ... so the article "a" after "answer is" reads as option A
    ("it is a dog", "B"),  # option text, once
    ("a cat and a dog", None),  # two option texts
    ("Z", "Z"),
    ("Cannot determine the answer", "Z"),  # refusal phrase
])
def test_can_infer(text, expected):
    assert can_infer(text, dict(OPTS)) == expected


def mcq_tsv(tmp_path, name="MMStar.tsv"):
    return write_tsv(tmp_path / name, ("index", "question", "A", "B", "C", "D", "answer", "category", "l2-category",
                                       "image"), [
        {"index": 0, "question": "q", **OPTS, "answer": "A", "category": "perception", "l2-category": "p1",
         "image": IMG},
        {"index": 1, "question": "q", **OPTS, "answer": "B", "category": "perception", "l2-category": "p2",
         "image": "0"},
        {"index": 2, "question": "q", **OPTS, "answer": "C", "category": "math", "l2-category": "m1", "image": "0"},
        {"index": 3, "question": "q", **OPTS, "answer": "D", "category": "math", "l2-category": "m1", "image": "0"},
    ])


def test_mmstar_accuracy_categories_unmatched_missing(tmp_path, capsys):
    tsv = mcq_tsv(tmp_path)
    # 0: right; 1: "A or B" unmatched (a judge would be asked) -> wrong; 2: wrong letter; 3: no answer.
    res = answers(tmp_path / "a.jsonl", {0: "A", 1: "A or B", 2: "D"})
    s = eval_mmstar.main(["--annotation-file", tsv, "--result-file", res, "--output-json", str(tmp_path / "o.json")])
    assert (s["questions"], s["correct"], s["overall"]) == (4, 1, 25.0)
    assert (s["unmatched"], s["missing"]) == (1, 1)
    assert s["per_category"] == {"math": {"questions": 2, "correct": 0, "accuracy": 0.0},
                                 "perception": {"questions": 2, "correct": 1, "accuracy": 50.0}}
    assert s["per_l2_category"]["p1"]["accuracy"] == 100.0 and s["per_split"] == {}
    assert json.loads((tmp_path / "o.json").read_text())["overall"] == 25.0
    assert "Accuracy: 25.00" in capsys.readouterr().out


def test_ai2d_unknown_index_is_an_error(tmp_path):
    tsv = mcq_tsv(tmp_path, "AI2D_TEST.tsv")
    res = answers(tmp_path / "a.jsonl", {0: "A", 9: "B"})
    with pytest.raises(EvalInputError, match=r"a\.jsonl:2: question_id 9 is not an index"):
        eval_ai2d.main(["--annotation-file", tsv, "--result-file", res])


# ------------------------------------------------------------------------------------------- OCRBench


def test_ocrbench_rules_and_totals(tmp_path, capsys):
    hme = "Handwritten Mathematical Expression Recognition"
    tsv = write_tsv(tmp_path / "OCRBench.tsv", ("index", "image", "question", "answer", "category"), [
        {"index": 0, "image": IMG, "question": "q", "answer": repr(["STOP"]), "category": "Regular Text Recognition"},
        {"index": 1, "image": IMG, "question": "q", "answer": repr(["x", "new york"]),
         "category": "Scene Text-centric VQA"},
        {"index": 2, "image": IMG, "question": "q", "answer": repr(["x^2 + 1"]), "category": hme},
        {"index": 3, "image": IMG, "question": "q", "answer": repr(["x^2 + 1"]), "category": "Doc-oriented VQA"},
        {"index": 4, "image": IMG, "question": "q", "answer": "Centre", "category": "Key Information Extraction"},
        {"index": 5, "image": IMG, "question": "q", "answer": repr(["7"]), "category": "Digit String Recognition"},
    ])
    res = answers(tmp_path / "a.jsonl", {
        0: "The sign says stop.",  # lower-cased substring: right
        1: "New\nYork city",  # the newline becomes a space: the second answer matches
        2: "The formula is x^2+1",  # formulas: all spaces removed on both sides, right
        3: "x^2+1",  # any other category keeps the spaces: "x^2 + 1" is not in it, wrong
        4: "the centre",  # a plain (non-list) answer cell is the one answer
    })  # 5: no answer
    s = eval_ocrbench.main(["--annotation-file", tsv, "--result-file", res])
    assert s["overall"] == 4 and s["final_score_norm"] == 0.4 and s["missing"] == 1
    assert s["groups"] == {"Text Recognition": 1, "Scene Text-centric VQA": 1, "Doc-oriented VQA": 0,
                           "Key Information Extraction": 1, hme: 1}
    assert s["categories"]["Digit String Recognition"] == {"score": 0, "questions": 1}
    assert "Final Score: 4" in capsys.readouterr().out


def test_ocrbench_unknown_category(tmp_path):
    tsv = write_tsv(tmp_path / "o.tsv", ("index", "image", "question", "answer", "category"),
                    [{"index": 0, "image": IMG, "question": "q", "answer": "['a']", "category": "Poetry"}])
    with pytest.raises(EvalInputError, match="category 'Poetry' is not an OCRBench category"):
        eval_ocrbench.eval_ocrbench(tsv, answers(tmp_path / "a.jsonl", {0: "a"}))


# ---------------------------------------------------------------------------------------------- MMMU


MC = {"A": "circle", "B": "square", "C": "triangle", "D": "hexagon"}


@pytest.mark.parametrize("text, expected", [
    ("(B) because it has four sides", "B"),
    ("The answer is A.", "A"),  # "." stripped, then " A " stands alone
    ("B.", "B"),
    ("'C'", "C"),  # the quote is the last character stripped
    ("(A) is wrong, (C) is right", "C"),  # several bracketed letters: the last one
    ("A or B", "B"),  # several lone letters: the last one
    ("I believe the right one is the square shape", "B"),  # more than 5 words: option text
    ("square", None),  # one word and no letter: MMMU would guess at random; unmatched here
    ("Bees", None),
])
def test_mmmu_multiple_choice_parsing(text, expected):
    assert parse_multi_choice(text, MC) == expected


def test_mmmu_open_parsing_and_matching():
    assert normalize("1,234.5") == [1234.5] and normalize("C") == [" c", "c "] and normalize("Tampa") == ["tampa"]
    # Comma, scientific, then plain numbers; the plain pattern also takes the "3" of "2e3" (MMMU's regex).
    assert extract_numbers("1,234.5 and 2e3 or -7") == ["1,234", "2e3", "234.5", "3", "-7"]
    assert parse_open("The answer is 4.") == [4.0]  # the shortest tail "4" and the number in it, both 4.0
    assert parse_open("So the city is Tampa.") == ["tampa"]  # tails after "so " and "is ": the shorter
    assert open_correct("4", parse_open("The answer is 4."))
    assert open_correct("1234.5", parse_open("It is 1,234.5"))  # thousands commas
    assert open_correct("3.429", parse_open("x = 3.4286"))  # both round to 3.43; "=" counts in the last line
    assert open_correct("C", parse_open("the answer is c"))  # a lone letter must stand alone ...
    assert not open_correct("C", parse_open("cat"))  # ... not inside a word
    assert open_correct(["Tampa", "Florida"], parse_open("It is in Florida."))  # any accepted answer
    assert not open_correct("12", parse_open("It is 13"))


def test_mmmu_scores_validation_headline_subjects_and_unmatched(tmp_path, capsys):
    cols = ("index", "question", "A", "B", "C", "D", "answer", "split", "id", "image")
    tsv = write_tsv(tmp_path / "MMMU_DEV_VAL.tsv", cols, [
        {"index": 1, "question": "q", **MC, "answer": "A", "split": "dev", "id": "dev_Math_1", "image": IMG},
        {"index": 2, "question": "q", **MC, "answer": "B", "split": "validation", "id": "validation_Art_Theory_3",
         "image": repr([IMG, IMG])},
        {"index": 3, "question": "q", **MC, "answer": "C", "split": "validation", "id": "validation_Math_2",
         "image": IMG},
        {"index": 4, "question": "q", "answer": "['24/7', '3.429']", "split": "validation", "id": "validation_Math_15",
         "image": IMG},
        {"index": 5, "question": "q", "answer": "12", "split": "validation", "id": "validation_Physics_7",
         "image": IMG},
    ])
    res = answers(tmp_path / "a.jsonl", {1: "A", 2: "(B)", 3: "hexagon", 4: "The result is 3.43", 5: "It is 13"})
    s = eval_mmmu.main(["--annotation-file", tsv, "--result-file", res])
    # validation: 2 right (index 2, 4) of 4; index 3 "hexagon" is one word: no candidate -> unmatched.
    assert s["overall"] == 50.0 and s["overall_split"] == "validation" and s["overall_questions"] == 4
    assert s["dev_val"] == 60.0 and s["unmatched"] == 1 and s["open_questions"] == 2
    assert s["per_split"]["dev"] == {"questions": 1, "correct": 1, "accuracy": 100.0}
    assert s["per_subject"]["Math"] == {"questions": 2, "correct": 1, "accuracy": 50.0}  # validation rows only
    assert set(s["per_discipline"]) == {"Art and Design", "Science"}
    assert s["per_type"]["open"]["accuracy"] == 50.0
    assert "Dev+Val: 60.00" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------- GQA

SHORT = "\nAnswer the question using a single word or phrase."


def gqa_files(tmp_path):
    def q(question, answer, structural, semantic, group, ops):
        return {"question": question, "answer": answer, "isBalanced": True, "groups": {"global": group, "local": "x"},
                "types": {"structural": structural, "semantic": semantic, "detailed": "d"},
                "semantic": [{"operation": o, "argument": a, "dependencies": []} for o, a in ops]}

    ann = {
        "1": q("Is it red?", "yes", "verify", "attr", None, [("select", "ball"), ("verify color", "red")]),
        "2": q("What color is it?", "blue", "query", "attr", "color", [("select", "ball"), ("query", "color")]),
        "3": q("What color is the cup?", "green", "query", "attr", "color", [("select", "cup"), ("query", "color")]),
        "4": q("Are there cups and balls?", "no", "logical", "obj", None,
               [("select", "cup"), ("exist", "?"), ("select", "ball"), ("exist", "?"), ("and", "")]),
        "5": q("What is it?", "circle", "query", "cat", "shape", [("select", "shape"), ("query", "name")]),
    }
    (tmp_path / "testdev_balanced_questions.json").write_text(json.dumps(ann))
    write_jsonl(tmp_path / "q.jsonl", [{"question_id": k, "image": f"n{k}.jpg", "text": v["question"] + SHORT}
                                       for k, v in ann.items()])
    return str(tmp_path / "q.jsonl"), str(tmp_path / "testdev_balanced_questions.json")


def test_gqa_conversion_types_steps_and_distribution(tmp_path, capsys):
    qfile, ann = gqa_files(tmp_path)
    res = answers(tmp_path / "a.jsonl", {"1": "Yes.", "2": "Blue", "3": "red", "4": "no, there are not"})
    pred = tmp_path / "pred.json"
    s = eval_gqa.main(["--question-file", qfile, "--annotation-file", ann, "--result-file", res,
                       "--predictions-file", str(pred)])
    # "Yes." -> "yes" and "Blue" -> "blue" (right); "red" and the long "no, ..." wrong; question 5 unanswered.
    assert (s["questions"], s["correct"], s["missing"], s["overall"]) == (5, 2, 1, 40.0)
    assert s["binary"] == 50.0 and s["open"] == pytest.approx(100 / 3)
    assert s["per_structural_type"]["query"] == {"accuracy": pytest.approx(100 / 3), "questions": 3}
    assert s["per_semantic_type"]["obj"] == {"accuracy": 0.0, "questions": 1}
    # Steps leave out the operations matching "exist" or "query: name" ("query: color" stays): 2, 2, 2, 3, 1.
    assert {k: v["questions"] for k, v in s["per_steps"].items()} == {"1": 1, "2": 3, "3": 1}
    assert s["per_words"]["3"]["questions"] == 2  # "Is it red?", "What is it?"
    # color group: gold {blue 1, green 1}, predicted {blue 1, red 1} -> 0 + 1 = 1, weight 2; shape: gold
    # {circle 1}, predicted {None 1} -> 1, weight 1; (2 + 1) / 3 = 1, / 100.
    assert s["distribution"] == pytest.approx(0.01)
    assert json.loads(pred.read_text())[:2] == [{"questionId": "1", "prediction": "yes"},
                                                {"questionId": "2", "prediction": "blue"}]
    assert "Accuracy: 40.00" in capsys.readouterr().out


def test_gqa_unknown_ids(tmp_path):
    qfile, ann = gqa_files(tmp_path)
    res = answers(tmp_path / "a.jsonl", {"1": "yes", "99": "no"})
    with pytest.raises(EvalInputError, match=r"a\.jsonl:2: question_id 99 is not in .*q\.jsonl"):
        eval_gqa.eval_gqa(qfile, ann, res)
    write_jsonl(tmp_path / "q2.jsonl", [{"question_id": "77", "image": "n.jpg", "text": "x"}])
    with pytest.raises(EvalInputError, match=r"q2\.jsonl:1: question_id 77 is not in .*testdev_balanced"):
        eval_gqa.eval_gqa(str(tmp_path / "q2.jsonl"), ann, res)


# ---------------------------------------------------------------------------------------------- POPE


@pytest.mark.parametrize("text, expected", [
    ("Yes", "yes"), ("No", "no"), ("no.", "no"), ("There is no dog.", "no"), ("I do not think so", "no"),
    ("Yes. No.", "yes"),  # only the first sentence counts
    ("No, there is none", "no"),  # commas are deleted before splitting
    ("NO", "yes"), ("Not really", "yes"), ("No!", "yes"),  # only exactly "No", "no", "not" count
])
def test_pope_answer_rule(text, expected):
    assert eval_pope.pope_answer(text) == expected


def pope_files(tmp_path, labels):
    """labels: split -> list of "yes"/"no"; question ids as LLaVA numbers them (split offset + n)."""
    coco = tmp_path / "coco"
    coco.mkdir(exist_ok=True)
    questions = []
    offsets = {"adversarial": 0, "random": 10_000_000, "popular": 20_000_000}
    for split, ls in labels.items():
        lines = [{"question_id": n, "image": f"img{n}.jpg", "text": f"Is there a thing {n}?", "label": label}
                 for n, label in enumerate(ls, start=1)]
        write_jsonl(coco / f"coco_pope_{split}.json", lines)
        questions += [{"question_id": offsets[split] + line["question_id"], "image": line["image"],
                       "text": line["text"] + SHORT, "category": split} for line in lines]
    return str(coco), write_jsonl(tmp_path / "llava_pope_test.jsonl", questions)


def test_pope_metrics_per_split_and_mean_f1(tmp_path, capsys):
    coco, qfile = pope_files(tmp_path, {"adversarial": ["yes", "no", "yes", "no"], "random": ["yes", "no"],
                                        "popular": ["yes", "no", "no"]})
    res = answers(tmp_path / "a.jsonl", {
        1: "Yes", 2: "No", 3: "No.", 4: "Yes, there is.",  # TP TN FN FP
        10000001: "yes", 10000002: "There is a thing.",  # TP FP: precision 50, recall 100
        20000001: "no", 20000002: "no",  # FN TN; 20000003 (label no) unanswered: taken as "yes", an FP
    })
    s = eval_pope.main(["--annotation-dir", coco, "--question-file", qfile, "--result-file", res])
    adv, rnd, pop = (s["splits"][k] for k in ("adversarial", "random", "popular"))
    assert (adv["tp"], adv["fp"], adv["tn"], adv["fn"]) == (1, 1, 1, 1)
    assert (adv["accuracy"], adv["precision"], adv["recall"], adv["f1"], adv["yes_ratio"]) == (50, 50, 50, 50, 50)
    assert (rnd["precision"], rnd["recall"], rnd["yes_ratio"]) == (50, 100, 100)
    assert rnd["f1"] == pytest.approx(200 / 3)
    # The missing answer counts as the opposite of its label (it used to be left out): TP 0, FP 1, TN 1, FN 1.
    assert (pop["tp"], pop["fp"], pop["tn"], pop["fn"]) == (0, 1, 1, 1)
    assert (pop["samples"], pop["missing"], pop["precision"], pop["f1"]) == (3, 1, 0, 0)
    assert pop["accuracy"] == pytest.approx(100 / 3) and pop["yes_ratio"] == pytest.approx(100 / 3)
    assert (s["questions"], s["missing"]) == (9, 1)
    # No "yes" at all: precision is 0/0, taken as 0 (LLaVA divides by zero), so F1 is 0.
    none_yes = eval_pope.split_metrics(["no", "no"], ["yes", "no"])
    assert (none_yes["precision"], none_yes["f1"], none_yes["accuracy"]) == (0, 0, 50)
    assert s["overall"] == pytest.approx((50 + 200 / 3 + 0) / 3)
    assert "F1 (mean): 38.89" in capsys.readouterr().out


def test_pope_pairs_in_order_and_checks_it(tmp_path):
    coco, qfile = pope_files(tmp_path, {"adversarial": ["yes", "no"]})
    res = answers(tmp_path / "a.jsonl", {1: "yes", 2: "no"})
    assert eval_pope.eval_pope(coco, qfile, res)["overall"] == 100.0
    lines = [json.loads(x) for x in open(os.path.join(coco, "coco_pope_adversarial.json"))]
    write_jsonl(os.path.join(coco, "coco_pope_adversarial.json"), lines[::-1])
    with pytest.raises(EvalInputError, match=r"coco_pope_adversarial\.json:1 is about img2\.jpg .* img1\.jpg"):
        eval_pope.eval_pope(coco, qfile, res)
    write_jsonl(os.path.join(coco, "coco_pope_adversarial.json"), lines[:1])
    with pytest.raises(EvalInputError, match="has 1 labels but .* has 2 adversarial questions"):
        eval_pope.eval_pope(coco, qfile, res)
    os.remove(os.path.join(coco, "coco_pope_adversarial.json"))
    with pytest.raises(EvalInputError, match="POPE adversarial annotation file not found"):
        eval_pope.eval_pope(coco, qfile, res)


# ----------------------------------------------------------------------------------------------- CLIs


@pytest.mark.parametrize("module, args", [
    ("eval_gqa", ["--question-file", "Q", "--annotation-file", "A", "--result-file", "R"]),
    ("eval_pope", ["--annotation-dir", ".", "--question-file", "Q", "--result-file", "R"]),
    ("eval_mmstar", ["--annotation-file", "A", "--result-file", "R"]),
    ("eval_ai2d", ["--annotation-file", "A", "--result-file", "R"]),
    ("eval_ocrbench", ["--annotation-file", "A", "--result-file", "R"]),
    ("eval_mmmu", ["--annotation-file", "A", "--result-file", "R"]),
])
def test_cli_missing_file_is_one_line_and_exit_2(tmp_path, module, args):
    args = [str(tmp_path / a) if a in ("Q", "A", "R") else a for a in args]
    proc = subprocess.run([sys.executable, "-m", f"llava.eval.{module}", *args], capture_output=True, text=True,
                          cwd=REPO)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and "not found" in proc.stderr and str(tmp_path) in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
