"""Write a tiny benchmark playground in the exact file formats LLaVA's evaluation reads, offline.

    python -m llava.tools.make_demo_data [--root playground/data/eval] [--seed 0] [--mme-images 2]

A few items per benchmark, with images drawn by PIL (coloured shapes and words on a plain background):

  MME/llava_mme.jsonl                       question lines with LLaVA's short-answer suffix
  MME/MME_Benchmark_release_version/<cat>/  all 14 subtasks, `--mme-images` images x 2 questions each; GT
                                            "question<TAB>Yes|No" txt files in MME's two layouts (images/ +
                                            questions_answers_YN/ for artwork, celebrity, landmark, posters,
                                            scene; image and txt side by side for the others)
  textvqa/llava_textvqa_val_v051_ocr.jsonl  3-line prompts with the reference OCR tokens (one line empty)
  textvqa/TextVQA_0.5.1_val.json            annotations, 10 answers each; textvqa/train_images/<id>.jpg
  scienceqa/llava_test_CQM-A.json           image and text-only questions; problems.json, pid_splits.json,
                                            images/test/<pid>/image.png (one RGBA with transparency)
  mmbench/mmbench_dev_20230712.tsv          dev TSV with answers, circular copies at index + 10^6 * k,
  mmbench_cn/mmbench_dev_cn_20231003.tsv    base64 PNG images, 2-4 options, some hints empty
  mm-vet/llava-mm-vet.jsonl, mm-vet.json, mm-vet/images/v1_<n>.png
  gqa/, pope/, mmstar/, ai2d/, ocrbench/, mmmu/   see `llava.tools.demo_data_more`

The output depends only on --seed (and the PIL version's PNG/JPEG encoders). A `.entropyprune-demo` file
marks the folder as demo data; the tool refuses to write into a folder holding benchmark files without
it, so it never mixes with (or overwrites) real data unless --force is given.
"""

from __future__ import annotations

import argparse
import os
import random

from llava.tools import demo_data_more as more
from llava.tools.demo_drawing import (
    COLORS,
    SHAPES,
    WORDS,
    draw_scene,
    png_base64,
    save_image,
    write_json,
    write_jsonl,
    write_tsv,
)

MARKER = ".entropyprune-demo"
LLAVA_SUFFIX = "Answer the question using a single word or phrase."
YES_NO = "Please answer yes or no."

MME_FOLDER_LAYOUT = ("artwork", "celebrity", "landmark", "posters", "scene")  # images/ + questions_answers_YN/
MME_SUBTASKS = (
    "existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR",
    "commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning",
)
MME_PNG = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


# ------------------------------------------------------------------------------------------------ MME


def _mme_questions(cat: str, rng: random.Random) -> tuple[list[tuple[str, str]], tuple[str, ...], list]:
    """(shapes, words) to draw and two (question, answer) pairs, one Yes and one No, for subtask `cat`."""
    colour, other = rng.sample(sorted(COLORS), 2)
    shape, other_shape = rng.sample(SHAPES, 2)
    count = rng.randint(1, 3)
    word, other_word = rng.sample(WORDS, 2)
    shapes = [(shape, colour)] * (count if cat == "count" else 1)
    words: tuple[str, ...] = ()
    if cat == "existence":
        qa = [(f"Is there a {shape} in this image?", "Yes"), (f"Is there a {other_shape} in this image?", "No")]
    elif cat == "count":
        qa = [(f"Are there {count} {shape}s in the image?", "Yes"),
              (f"Are there {count + 1} {shape}s in the image?", "No")]
    elif cat == "position":
        shapes = [(shape, colour), (other_shape, other)]
        qa = [(f"Is the {shape} on the left of the {other_shape}?", "Yes"),
              (f"Is the {shape} on the right of the {other_shape}?", "No")]
    elif cat == "color":
        qa = [(f"Is there a {colour} {shape} in the image?", "Yes"),
              (f"Is there a {other} {shape} in the image?", "No")]
    elif cat in ("posters", "celebrity", "landmark", "artwork", "scene"):
        words = (word,)
        noun = {"posters": "movie", "celebrity": "person", "landmark": "place", "artwork": "painting",
                "scene": "scene"}[cat]
        qa = [(f"Is this {noun} called {word.title()}?", "Yes"), (f"Is this {noun} called {other_word.title()}?", "No")]
    elif cat == "OCR":
        words = (word,)
        qa = [(f'Is the word in the image "{word}"?', "Yes"), (f'Is the word in the image "{other_word}"?', "No")]
    elif cat == "commonsense_reasoning":
        qa = [(f"Should you stop when you see a {colour} {shape}?", "Yes" if colour == "red" else "No"),
              (f"Is the {shape} edible?", "No")]
    elif cat == "numerical_calculation":
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        words = (f"{a} + {b} =",)
        qa = [(f"Is the answer to the arithmetic question in the image {a + b}?", "Yes"),
              (f"Is the answer to the arithmetic question in the image {a + b + 1}?", "No")]
    elif cat == "text_translation":
        words = (word,)
        qa = [(f"Is it appropriate to translate the word in the image into English as '{word.lower()}'?", "Yes"),
              (f"Is it appropriate to translate the word in the image into English as '{other_word.lower()}'?",
               "No")]
    elif cat == "code_reasoning":
        n = rng.randint(2, 6)
        words = (f"print({n} * 2)",)
        qa = [(f"The image shows a python code. Is the output of the code '{2 * n}'?", "Yes"),
              (f"The image shows a python code. Is the output of the code '{2 * n + 1}'?", "No")]
    else:
        raise ValueError(f"unknown MME subtask {cat!r}")
    if rng.random() < 0.5:
        qa.reverse()  # MME pairs come in either order
    return shapes, words, qa


def make_mme(root: str, rng: random.Random, images_per_subtask: int) -> int:
    base = os.path.join(root, "MME", "MME_Benchmark_release_version")
    lines = []
    for cat in MME_SUBTASKS:
        for i in range(images_per_subtask):
            ext = ".png" if cat in MME_PNG else ".jpg"
            stem = f"{i + 1:04d}" if cat in MME_PNG else f"{10000 + 37 * i}"
            shapes, words, qa = _mme_questions(cat, rng)
            img = draw_scene(rng, shapes, words)
            if cat in MME_FOLDER_LAYOUT:
                rel = f"{cat}/images/{stem}{ext}"
                txt = os.path.join(base, cat, "questions_answers_YN", stem + ".txt")
            else:
                rel = f"{cat}/{stem}{ext}"
                txt = os.path.join(base, cat, stem + ".txt")
            save_image(img, os.path.join(base, rel))
            gt_lines = []
            for j, (question, answer) in enumerate(qa):
                # One ground-truth line uses the double-space form some MME files have.
                sep = "  " if (cat == "landmark" and i == 0 and j == 0) else " "
                gt_lines.append(f"{question}{sep}{YES_NO}\t{answer}\n")
                lines.append({"question_id": rel, "image": rel, "text": f"{question}\n{LLAVA_SUFFIX}",
                              "category": cat})
            os.makedirs(os.path.dirname(txt), exist_ok=True)
            with open(txt, "w", encoding="utf-8") as f:
                f.writelines(gt_lines)
    write_jsonl(os.path.join(root, "MME", "llava_mme.jsonl"), lines)
    return len(lines)


# ------------------------------------------------------------------------------------------------ TextVQA


def make_textvqa(root: str, rng: random.Random) -> int:
    base = os.path.join(root, "textvqa")
    # (words drawn, [(question, answers x10, OCR tokens shown in the prompt)])
    plan = [
        (("STOP",), [("what does the sign say?", ["stop"] * 8 + ["stop sign", "halt"], ["STOP"]),
                     ("what color is the sign?", ["red"] * 9 + ["white"], ["STOP"])]),
        (("CAFE", "OPEN"), [("what is the name of the shop?", ["cafe"] * 6 + ["the cafe"] * 3 + ["open"],
                             ["CAFE", "OPEN"])]),
        (("42",), [("what number is written?", ["42"] * 10, ["42"])]),
        ((), [("what shape is in the picture?", ["circle"] * 7 + ["a circle", "round", "ball"], [])]),
    ]
    lines, data = [], []
    qid = 34602
    for n, (words, questions) in enumerate(plan):
        image_id = "".join(rng.choice("0123456789abcdef") for _ in range(16))
        img = draw_scene(rng, [(rng.choice(SHAPES), "red" if n == 0 else rng.choice(sorted(COLORS)))], words)
        save_image(img, os.path.join(base, "train_images", image_id + ".jpg"))
        for question, answers, ocr in questions:
            text = f"{question}\nReference OCR token: {', '.join(ocr)}\n{LLAVA_SUFFIX}"
            lines.append({"question_id": image_id, "image": f"{image_id}.jpg", "text": text, "category": "default"})
            data.append({
                "question": question, "image_id": image_id, "image_classes": ["Sign"],
                "flickr_original_url": f"https://example.invalid/{image_id}.jpg",
                "flickr_300k_url": f"https://example.invalid/{image_id}_300k.jpg",
                "image_width": img.width, "image_height": img.height, "answers": answers,
                "question_tokens": question.rstrip("?").split(), "question_id": qid, "set_name": "val",
            })
            qid += 1
    write_jsonl(os.path.join(base, "llava_textvqa_val_v051_ocr.jsonl"), lines)
    write_json(os.path.join(base, "TextVQA_0.5.1_val.json"),
                {"dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1", "data": data})
    return len(lines)


# ------------------------------------------------------------------------------------------------ ScienceQA


def make_scienceqa(root: str, rng: random.Random) -> int:
    base = os.path.join(root, "scienceqa")
    plan = [  # (pid, image?, hint, question, choices, answer index)
        ("4", True, "", "Which shape is shown in the picture?", ["circle", "square", "triangle"], 0),
        ("11", False, "Maya has a glass of water. She puts it in the freezer.",
         "What happens to the water?", ["It freezes.", "It boils."], 0),
        ("25", True, "Look at the picture.", "Which color is the shape?", ["blue", "red", "green", "yellow"], 1),
        ("31", False, "", "Which word would you find on a dictionary page with the guide words ant - cat?",
         ["bee", "dog"], 0),
        ("58", True, "", "How many shapes are there?", ["one", "two"], 0),
    ]
    problems, questions = {}, []
    for n, (pid, has_image, hint, question, choices, answer) in enumerate(plan):
        text = (f"Context: {hint}\n" if hint else "") + question
        for letter, choice in zip("ABCDE", choices, strict=False):
            text += f"\n{letter}. {choice}"
        entry = {"id": pid, "conversations": [
            {"from": "human", "value": ("<image>\n" if has_image else "") + text},
            {"from": "gpt", "value": "ABCDE"[answer]},
        ]}
        if has_image:
            entry["image"] = f"{pid}/image.png"
            shape = {"4": "circle", "25": "square", "58": "triangle"}[pid]
            colour = "red" if pid == "25" else rng.choice(sorted(COLORS))
            img = draw_scene(rng, [(shape, colour)], mode="RGBA" if n == 0 else "RGB")
            save_image(img, os.path.join(base, "images", "test", pid, "image.png"))
        # LLaVA's question file lists "image" right after "id"; keep that key order.
        questions.append({k: entry[k] for k in ("id", "image", "conversations") if k in entry})
        problems[pid] = {
            "question": question, "choices": choices, "answer": answer, "hint": hint,
            "image": "image.png" if has_image else None, "task": "closed choice", "grade": "grade3",
            "subject": "natural science", "topic": "demo", "category": "Demo", "skill": "demo",
            "lecture": "", "solution": "", "split": "test",
        }
    write_json(os.path.join(base, "llava_test_CQM-A.json"), questions, indent=2)
    write_json(os.path.join(base, "problems.json"), problems)
    write_json(os.path.join(base, "pid_splits.json"),
                {"train": [], "val": [], "test": [p[0] for p in plan], "trainval": [], "minitrain": [],
                 "minival": [], "minitest": [p[0] for p in plan]})
    return len(questions)


# ------------------------------------------------------------------------------------------------ MMBench


MMBENCH_COLUMNS = ("index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "source",
                   "l2-category", "comment", "split")


def _mmbench_rows(rng: random.Random, lang: str) -> list[dict]:
    if lang == "en":
        plan = [  # (question, hint, options, answer index, category, l2)
            ("What shape is in the image?", "The image shows one object.", ["circle", "square", "triangle", "star"],
             0, "object_localization", "finegrained_perception (instance-level)"),
            ("Which color is the shape?", "", ["red", "blue", "green"], 0, "attribute_recognition",
             "finegrained_perception (instance-level)"),
            ("Is there any text in the image?", "", ["yes", "no"], 0, "ocr", "finegrained_perception (cross-instance)"),
        ]
    else:
        plan = [
            ("图中是什么形状？", "图中只有一个物体。", ["圆形", "正方形", "三角形", "星形"], 0, "object_localization",
             "finegrained_perception (instance-level)"),
            ("这个形状是什么颜色？", "", ["红色", "蓝色", "绿色"], 0, "attribute_recognition",
             "finegrained_perception (instance-level)"),
            ("图中有文字吗？", "", ["有", "没有"], 0, "ocr", "finegrained_perception (cross-instance)"),
        ]
    rows = []
    for n, (question, hint, options, answer, category, l2) in enumerate(plan):
        shape = ("circle", "square", "triangle")[n]
        img = draw_scene(rng, [(shape, "red")], ("SALE",) if n == 2 else ())
        b64 = png_base64(img)
        base_index = 100 + 7 * n
        for k in range(len(options)):
            # Circular copy k shows the options shifted by k; the answer letter follows its text.
            shifted = options[k:] + options[:k]
            letters = dict(zip("ABCD", shifted + [""] * (4 - len(shifted)), strict=True))
            rows.append({
                "index": str(base_index + 1_000_000 * k), "question": question, "hint": hint, **letters,
                "answer": "ABCD"[shifted.index(options[answer])], "category": category, "image": b64,
                "source": "demo", "l2-category": l2, "comment": "", "split": "dev",
            })
    # The real TSVs list every original question first, then the copies.
    rows.sort(key=lambda r: (int(r["index"]) // 1_000_000, int(r["index"])))
    return rows


def make_mmbench(root: str, rng: random.Random, lang: str) -> int:
    folder, split = ("mmbench", "mmbench_dev_20230712") if lang == "en" else ("mmbench_cn", "mmbench_dev_cn_20231003")
    rows = _mmbench_rows(rng, lang)
    write_tsv(os.path.join(root, folder, split + ".tsv"), MMBENCH_COLUMNS, rows)
    return len(rows)


# ------------------------------------------------------------------------------------------------ MM-Vet


def make_mmvet(root: str, rng: random.Random) -> int:
    base = os.path.join(root, "mm-vet")
    plan = [  # (question, answer, capabilities, shapes, words)
        ("What is written on the sign?", "STOP", ["ocr"], [("square", "red")], ("STOP",)),
        ("How many circles are there?", "2", ["rec", "math"], [("circle", "blue"), ("circle", "blue")], ()),
        ("What color is the triangle?", "green", ["rec"], [("triangle", "green")], ()),
        ("Describe the image in one sentence.", "A yellow circle with the word OPEN below it.",
         ["rec", "ocr", "gen"], [("circle", "yellow")], ("OPEN",)),
    ]
    lines, meta = [], {}
    for n, (question, answer, caps, shapes, words) in enumerate(plan):
        name = f"v1_{n}.png"
        save_image(draw_scene(rng, shapes, words), os.path.join(base, "images", name))
        lines.append({"question_id": n, "image": name, "text": question, "category": "conv"})
        meta[f"v1_{n}"] = {"imagename": name, "capability": caps, "question": question, "answer": answer}
    write_jsonl(os.path.join(base, "llava-mm-vet.jsonl"), lines)
    write_json(os.path.join(base, "mm-vet.json"), meta, indent=2)
    return len(lines)


# ------------------------------------------------------------------------------------------------ main


_OWNED = ("MME/llava_mme.jsonl", "textvqa/llava_textvqa_val_v051_ocr.jsonl", "scienceqa/llava_test_CQM-A.json",
          "mmbench/mmbench_dev_20230712.tsv", "mmbench_cn/mmbench_dev_cn_20231003.tsv", "mm-vet/llava-mm-vet.jsonl",
          "gqa/llava_gqa_testdev_balanced.jsonl", "pope/llava_pope_test.jsonl", "mmstar/MMStar.tsv",
          "ai2d/AI2D_TEST.tsv", "ocrbench/OCRBench.tsv", "mmmu/MMMU_DEV_VAL.tsv")


def build(root: str = "playground/data/eval", seed: int = 0, mme_images: int = 2, force: bool = False) -> dict:
    """Write the demo playground under `root`; returns the number of questions per benchmark."""
    if mme_images < 1:
        raise ValueError(f"--mme-images must be >= 1, got {mme_images}")
    real = [p for p in _OWNED if os.path.exists(os.path.join(root, p))]
    if real and not os.path.exists(os.path.join(root, MARKER)) and not force:
        raise FileExistsError(
            f"{root} already holds benchmark files that are not demo data ({', '.join(real)}); pass another "
            "--root (e.g. playground/data/eval-demo), or --force to overwrite them"
        )
    os.makedirs(root, exist_ok=True)
    # One generator per benchmark, so adding items to one leaves the others' files unchanged.
    counts = {
        "mme": make_mme(root, random.Random(f"{seed}-mme"), mme_images),
        "textvqa": make_textvqa(root, random.Random(f"{seed}-textvqa")),
        "sqa": make_scienceqa(root, random.Random(f"{seed}-sqa")),
        "mmbench": make_mmbench(root, random.Random(f"{seed}-mmbench"), "en"),
        "mmbench_cn": make_mmbench(root, random.Random(f"{seed}-mmbench_cn"), "cn"),
        "mmvet": make_mmvet(root, random.Random(f"{seed}-mmvet")),
        "gqa": more.make_gqa(root, random.Random(f"{seed}-gqa")),
        "pope": more.make_pope(root, random.Random(f"{seed}-pope")),
        "mmstar": more.make_mmstar(root, random.Random(f"{seed}-mmstar")),
        "ai2d": more.make_ai2d(root, random.Random(f"{seed}-ai2d")),
        "ocrbench": more.make_ocrbench(root, random.Random(f"{seed}-ocrbench")),
        "mmmu": more.make_mmmu(root, random.Random(f"{seed}-mmmu")),
    }
    with open(os.path.join(root, MARKER), "w", encoding="utf-8") as f:
        f.write(f"demo data written by llava.tools.make_demo_data (seed {seed}); not a real benchmark\n")
    return counts


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default="playground/data/eval", help="where the benchmark folders go")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mme-images", type=int, default=2, help="images per MME subtask (2 questions each)")
    ap.add_argument("--force", action="store_true", help="overwrite benchmark files that are not demo data")
    args = ap.parse_args(argv)
    counts = build(args.root, args.seed, args.mme_images, args.force)
    shown = ", ".join(f"{k} {v}" for k, v in counts.items())
    print(f"demo benchmark data written to {args.root} (questions: {shown})")


if __name__ == "__main__":
    from llava.utils import run_cli

    run_cli(main)
