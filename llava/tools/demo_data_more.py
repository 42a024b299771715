"""Demo data for GQA, POPE and VLMEvalKit's TSVs (MMStar, AI2D, OCRBench, MMMU), in their real formats.

Called by `llava.tools.make_demo_data.build`; a few questions each:

  gqa/llava_gqa_testdev_balanced.jsonl      LLaVA's question lines (string question ids, short-answer suffix)
  gqa/data/testdev_balanced_questions.json  GQA annotations: answer, types, semantic program, groups
  gqa/data/images/n<id>.jpg
  pope/llava_pope_test.jsonl                adversarial, random, popular questions (LLaVA's id offsets)
  pope/coco/coco_pope_<split>.json          JSON-lines labels; pope/val2014/COCO_val2014_<id>.jpg
  mmstar/MMStar.tsv, ai2d/AI2D_TEST.tsv     multiple choice; one MMStar row shares another row's image by
                                            index, as VLMEvalKit's files do
  ocrbench/OCRBench.tsv                     list-literal answers, a handwritten-formula row
  mmmu/MMMU_DEV_VAL.tsv                     dev and validation rows, open questions, a two-image question
"""

from __future__ import annotations

import os
import random

from llava.tools.demo_drawing import draw_scene, png_base64, save_image, write_json, write_jsonl, write_tsv

SHORT = "Answer the question using a single word or phrase."


# ------------------------------------------------------------------------------------------------ GQA


def make_gqa(root: str, rng: random.Random) -> int:
    base = os.path.join(root, "gqa")
    # (question id, image id, question, answer, structural, semantic, detailed, global group, program, shapes)
    plan = [
        ("201307251", "n161313", "Is the circle red?", "yes", "verify", "attr", "verifyAttr", None,
         [("select", "circle"), ("verify color", "red")], [("circle", "red")]),
        ("20136592", "n446242", "What color is the square?", "blue", "query", "attr", "colorObj", "color",
         [("select", "square"), ("query", "color")], [("square", "blue")]),
        ("20602803", "n168412", "Is the triangle green or yellow?", "green", "choose", "attr", "chooseAttr",
         "color", [("select", "triangle"), ("choose color", "green|yellow")], [("triangle", "green")]),
        ("201079958", "n23181", "Are there both circles and squares?", "no", "logical", "obj", "existAnd", None,
         [("select", "circle"), ("exist", "?"), ("select", "square"), ("exist", "?"), ("and", "")],
         [("circle", "orange")]),
        ("2062325", "n179136", "What is the name of the shape on the left?", "circle", "query", "cat",
         "categoryRelS", "shape", [("select", "shape"), ("filter hposition", "left"), ("query", "name")],
         [("circle", "black"), ("square", "red")]),
    ]
    lines, annotations = [], {}
    for qid, image_id, question, answer, structural, semantic, detailed, group, program, shapes in plan:
        save_image(draw_scene(rng, shapes), os.path.join(base, "data", "images", image_id + ".jpg"))
        lines.append({"question_id": qid, "image": image_id + ".jpg", "text": f"{question}\n{SHORT}",
                      "category": "default"})
        annotations[qid] = {
            "semantic": [{"operation": op, "dependencies": [i - 1] if i else [], "argument": arg}
                         for i, (op, arg) in enumerate(program)],
            "entailed": [], "equivalent": [qid], "question": question, "imageId": image_id, "isBalanced": True,
            "groups": {"global": group, "local": f"demo-{qid}"}, "answer": answer,
            "semanticStr": " ".join(f"{op}: {arg}" for op, arg in program),
            "annotations": {"answer": {}, "question": {}, "fullAnswer": {}},
            "types": {"detailed": detailed, "semantic": semantic, "structural": structural},
            "fullAnswer": f"The answer is {answer}.",
        }
    write_jsonl(os.path.join(base, "llava_gqa_testdev_balanced.jsonl"), lines)
    write_json(os.path.join(base, "data", "testdev_balanced_questions.json"), annotations)
    return len(lines)


# ------------------------------------------------------------------------------------------------ POPE

# LLaVA's llava_pope_test.jsonl numbers each split's questions from these offsets, in this order.
POPE_SPLITS = (("adversarial", 0), ("random", 10_000_000), ("popular", 20_000_000))


def make_pope(root: str, rng: random.Random) -> int:
    base = os.path.join(root, "pope")
    lines = []
    for split, offset in POPE_SPLITS:
        labels = []
        present, absent = rng.sample(("circle", "square", "triangle"), 2)
        image = f"COCO_val2014_{rng.randint(1, 581929):012d}.jpg"
        save_image(draw_scene(rng, [(present, "red")]), os.path.join(base, "val2014", image))
        # One question with answer yes and one with no, in the order the real files have them per image.
        for n, (obj, label) in enumerate(((present, "yes"), (absent, "no")), start=1):
            text = f"Is there a {obj} in the image?"
            labels.append({"question_id": n, "image": image, "text": text, "label": label})
            lines.append({"question_id": offset + n, "image": image, "text": f"{text}\n{SHORT}",
                          "category": split})
        write_jsonl(os.path.join(base, "coco", f"coco_pope_{split}.json"), labels)
    write_jsonl(os.path.join(base, "llava_pope_test.jsonl"), lines)
    return len(lines)


# ------------------------------------------------------------------------------------------------ TSVs


def _image(rng: random.Random, shape: str, colour: str = "red", words: tuple[str, ...] = ()) -> str:
    return png_base64(draw_scene(rng, [(shape, colour)], words))


MMSTAR_COLUMNS = ("index", "question", "A", "B", "C", "D", "answer", "category", "l2-category", "bench", "image")


def make_mmstar(root: str, rng: random.Random) -> int:
    first = _image(rng, "circle")
    rows = [
        {"index": 0, "question": "What shape is shown?", "A": "square", "B": "circle", "C": "star",
         "D": "heart", "answer": "B", "category": "coarse perception", "l2-category": "image scene and topic",
         "bench": "demo", "image": first},
        {"index": 1, "question": "What color is the shape?", "A": "red", "B": "green", "C": "blue",
         "D": "black", "answer": "A", "category": "fine-grained perception", "l2-category": "attribute recognition",
         "bench": "demo", "image": "0"},  # VLMEvalKit's files point at another row's image by index
        {"index": 2, "question": "How many shapes are there?", "A": "1", "B": "2", "C": "3", "D": "4",
         "answer": "A", "category": "math", "l2-category": "numeric commonsense and calculation",
         "bench": "demo", "image": _image(rng, "triangle", "blue")},
    ]
    write_tsv(os.path.join(root, "mmstar", "MMStar.tsv"), MMSTAR_COLUMNS, rows)
    return len(rows)


AI2D_COLUMNS = ("index", "question", "A", "B", "C", "D", "answer", "image")


def make_ai2d(root: str, rng: random.Random) -> int:
    rows = [
        {"index": 0, "question": "Which shape is in the diagram?", "A": "triangle", "B": "square", "C": "circle",
         "D": "line", "answer": "A", "image": _image(rng, "triangle", "green")},
        {"index": 1, "question": "What stage comes first?", "A": "egg", "B": "larva", "C": "adult", "D": "",
         "answer": "A", "image": _image(rng, "circle", "yellow", ("EGG",))},
    ]
    write_tsv(os.path.join(root, "ai2d", "AI2D_TEST.tsv"), AI2D_COLUMNS, rows)
    return len(rows)


OCRBENCH_COLUMNS = ("index", "image", "question", "answer", "category")


def make_ocrbench(root: str, rng: random.Random) -> int:
    rows = [
        {"index": 0, "image": _image(rng, "square", "red", ("STOP",)), "question": "what is written in the image?",
         "answer": repr(["STOP"]), "category": "Regular Text Recognition"},
        {"index": 1, "image": _image(rng, "circle", "blue", ("CAFE",)), "question": "What is the shop called?",
         "answer": repr(["cafe", "the cafe"]), "category": "Scene Text-centric VQA"},
        {"index": 2, "image": _image(rng, "square", "black", ("x^2 + 1",)),
         "question": "Please write out the expression of the formula in the image using LaTeX format.",
         "answer": repr(["x^2 + 1"]), "category": "Handwritten Mathematical Expression Recognition"},
    ]
    write_tsv(os.path.join(root, "ocrbench", "OCRBench.tsv"), OCRBENCH_COLUMNS, rows)
    return len(rows)


MMMU_COLUMNS = ("index", "question", "A", "B", "C", "D", "answer", "category", "split", "id", "image")


def make_mmmu(root: str, rng: random.Random) -> int:
    two = repr([_image(rng, "circle", "red"), _image(rng, "square", "blue")])
    rows = [
        {"index": 1, "question": "<image 1> Which shape is drawn?", "A": "circle", "B": "square", "C": "triangle",
         "D": "", "answer": "A", "category": "Math", "split": "dev", "id": "dev_Math_1",
         "image": _image(rng, "circle", "green")},
        {"index": 2, "question": "Which image shows a square? <image 1> <image 2>", "A": "<image 1>",
         "B": "<image 2>", "C": "", "D": "", "answer": "B", "category": "Art_Theory", "split": "validation",
         "id": "validation_Art_Theory_3", "image": two},
        {"index": 3, "question": "<image 1> How many sides does the shape have?", "A": "", "B": "", "C": "", "D": "",
         "answer": "4", "category": "Math", "split": "validation", "id": "validation_Math_15",
         "image": _image(rng, "square", "orange")},
        {"index": 4, "question": "<image 1> Name the city or the state shown.", "A": "", "B": "", "C": "", "D": "",
         "answer": repr(["Tampa", "Florida"]), "category": "Geography", "split": "validation",
         "id": "validation_Geography_4", "image": _image(rng, "triangle", "yellow", ("TAMPA",))},
    ]
    write_tsv(os.path.join(root, "mmmu", "MMMU_DEV_VAL.tsv"), MMMU_COLUMNS, rows)
    return len(rows)
