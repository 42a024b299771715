"""A synthetic visual task, rendered deterministically from a seed, in LLaVA's training and benchmark formats.

    python -m llava.tools.make_synthetic_data --out DIR [--seed 0] [--train 2000] [--test 100] [--turns 8]
        [--task full|colour] [--train-radius 13-17]

Every image is 336x336 (what LLaVA-1.5's CLIP tower sees: 24x24 patches of 14 px) on a light grey
background divided into a 3x3 grid of 112 px cells. One to four small shapes (circle, square, triangle;
red, green, blue or yellow; 26-34 px across, so each covers only a few patches) sit in distinct cells,
and a short word (STOP, EXIT, ...) is written in black in another cell with a built-in 5x7 bitmap font.
Every (shape, colour) pair appears at most once per image, so "the red circle" names one object.
Answers depend on where things are: "Is the red circle in the top left of the image?", "Is the shape in
the center green?". Pruning away the few tokens of a small object loses it.

What it writes:

  DIR/train/images/<n>.png             training images
  DIR/train/synthetic_pretrain.json    stage 1: one caption per image, LLaVA-Pretrain's
                                       blip_laion_cc_sbu_558k.json format
  DIR/train/synthetic_instruct.json    stage 2: multi-turn conversations, llava_v1_5_mix665k.json's format,
                                       with LLaVA-1.5's answer-format suffixes
  DIR/eval/MME/                        llava_mme.jsonl + MME_Benchmark_release_version/<subtask>/<n>.png and
                                       <n>.txt (subtasks existence, count, position, color, OCR; each image
                                       one Yes and one No question, as MME)
  DIR/eval/scienceqa/                  llava_test_CQM-A.json, problems.json, pid_splits.json,
                                       images/test/<pid>/image.png (multiple choice, 2-4 options)
  DIR/eval/textvqa/                    llava_textvqa_val_v051_ocr.jsonl + TextVQA_0.5.1_val.json,
                                       train_images/<id>.png ("what word is written in the image?", no OCR
                                       tokens in the prompt)
  DIR/manifest.json                    seed, counts and the SHA-256 of every image's pixels

--train N training images (each with --turns question turns), --test M images per MME subtask, M
ScienceQA problems and M TextVQA questions. The drivers and scorers read the eval folders unchanged,
e.g. `llava.eval.model_vqa_loader --question-file DIR/eval/MME/llava_mme.jsonl --image-folder
DIR/eval/MME/MME_Benchmark_release_version` then `llava.eval.eval_mme --mme-dir ...`.

`--task colour` (the demo model's task) asks only which colours an image shows: one to three shapes per image,
training conversations of "What colors are in the image?" and "Is there a red shape in the image?" for each
colour in a random order, and an MME set with one subtask, existence, asked that way. `--train-radius LO-HI`
sizes the training images' shapes (bigger ones are found sooner by a small model); the test images keep 13-17.

Determinism: each image comes from its own `random.Random` stream named by (seed, split, index) and is
drawn by integer arithmetic on a pixel buffer (no anti-aliasing, no font files), so the pixels are the
same on every machine and Python version; PNG file bytes may still differ with the zlib Pillow was
built with, which is why the manifest hashes pixels. Held out: no test scene (objects, cells and word)
is used for training, and no training image is a test image; training scenes that collide with a test
scene are redrawn.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil

from PIL import Image
from tqdm import tqdm

SIZE = 336
CELL = SIZE // 3
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30)}
SHAPES = ("circle", "square", "triangle")
WORDS = ("STOP", "EXIT", "OPEN", "SALE", "CAFE", "PARK", "BUS", "TAXI")
CELL_NAMES = ("top left", "top center", "top right", "middle left", "center", "middle right",
              "bottom left", "bottom center", "bottom right")
RADIUS = (13, 17)  # the test scenes' shapes: 26-34 px across, a few of the 576 patches each
MAX_RADIUS = (CELL - 12) // 2  # the largest shape that still fits in its cell with a 6 px margin
NUMBERS = ("zero", "one", "two", "three", "four", "five")
MAX_OBJECTS = 4
TEXT_COLOUR = (0, 0, 0)

SHORT = "Answer the question using a single word or phrase."
LETTER = "Answer with the option's letter from the given choices directly."
YES_NO = "Please answer yes or no."
MARKER = ".entropyprune-synthetic"
MME_SUBTASKS = ("existence", "count", "position", "color", "OCR")
TASKS = ("full", "colour")

# 5x7 glyphs, one string of 5 characters per row ('#' = ink), for the letters of WORDS.
GLYPHS = {
    "A": (".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "B": ("####.", "#...#", "#...#", "####.", "#...#", "#...#", "####."),
    "C": (".###.", "#...#", "#....", "#....", "#....", "#...#", ".###."),
    "E": ("#####", "#....", "#....", "####.", "#....", "#....", "#####"),
    "F": ("#####", "#....", "#....", "####.", "#....", "#....", "#...."),
    "I": (".###.", "..#..", "..#..", "..#..", "..#..", "..#..", ".###."),
    "K": ("#...#", "#..#.", "#.#..", "##...", "#.#..", "#..#.", "#...#"),
    "L": ("#....", "#....", "#....", "#....", "#....", "#....", "#####"),
    "N": ("#...#", "##..#", "#.#.#", "#..##", "#...#", "#...#", "#...#"),
    "O": (".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."),
    "P": ("####.", "#...#", "#...#", "####.", "#....", "#....", "#...."),
    "R": ("####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#"),
    "S": (".####", "#....", "#....", ".###.", "....#", "....#", "####."),
    "T": ("#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."),
    "U": ("#...#", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."),
    "X": ("#...#", "#...#", ".#.#.", "..#..", ".#.#.", "#...#", "#...#"),
}
GLYPH_SCALE = 3  # 15x21 px per letter


# ------------------------------------------------------------------------------------------------ scenes


class Scene:
    """What one image shows: objects (shape, colour, cell, centre x, centre y, radius) and a word in a cell."""

    def __init__(self, objects: list[tuple[str, str, int, int, int, int]], word: str, word_cell: int,
                 word_xy: tuple[int, int], background: tuple[int, int, int]):
        self.objects = objects
        self.word = word
        self.word_cell = word_cell
        self.word_xy = word_xy
        self.background = background

    @property
    def signature(self) -> tuple:
        """The scene as the questions see it: (shape, colour, cell) of each object, the word and its cell."""
        return (tuple(sorted((s, c, cell) for s, c, cell, *_ in self.objects)), self.word, self.word_cell)

    def at(self, cell: int):
        """The object in `cell`, or None."""
        for obj in self.objects:
            if obj[2] == cell:
                return obj
        return None

    def caption(self) -> str:
        parts = [f"a {c} {s} in the {CELL_NAMES[cell]}" for s, c, cell, *_ in sorted(self.objects, key=lambda o: o[2])]
        shapes = ", ".join(parts[:-1]) + (" and " if len(parts) > 1 else "") + parts[-1]
        return f"{shapes[0].upper()}{shapes[1:]}, and the word {self.word} in the {CELL_NAMES[self.word_cell]}."

    def to_json(self) -> dict:
        return {"objects": [{"shape": s, "color": c, "cell": CELL_NAMES[cell], "center": [x, y], "radius": r}
                            for s, c, cell, x, y, r in self.objects],
                "word": self.word, "word_cell": CELL_NAMES[self.word_cell]}


def word_size(word: str) -> tuple[int, int]:
    return (len(word) * 6 - 1) * GLYPH_SCALE, 7 * GLYPH_SCALE


def make_scene(rng: random.Random, n_objects: int | None = None, radius: tuple[int, int] = RADIUS) -> Scene:
    n = n_objects if n_objects is not None else rng.randint(1, MAX_OBJECTS)
    cells = rng.sample(range(9), n + 1)
    kinds = rng.sample([(s, c) for s in SHAPES for c in COLOURS], n)
    objects = []
    for (shape, colour), cell in zip(kinds, cells[:n], strict=True):
        r = rng.randint(*radius)
        x0, y0 = (cell % 3) * CELL, (cell // 3) * CELL
        cx = rng.randint(x0 + r + 6, x0 + CELL - r - 6)
        cy = rng.randint(y0 + r + 6, y0 + CELL - r - 6)
        objects.append((shape, colour, cell, cx, cy, r))
    word = rng.choice(WORDS)
    w, h = word_size(word)
    wc = cells[n]
    x0, y0 = (wc % 3) * CELL, (wc // 3) * CELL
    wx = rng.randint(x0 + 4, x0 + CELL - w - 4)
    wy = rng.randint(y0 + 4, y0 + CELL - h - 4)
    grey = rng.randint(225, 245)
    return Scene(objects, word, wc, (wx, wy), (grey, grey, grey))


def _inside(shape: str, dx: int, dy: int, r: int) -> bool:
    """Whether the pixel at offset (dx, dy) from the centre is inside the shape of radius r (integer maths)."""
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return abs(dx) <= r and abs(dy) <= r
    # Triangle: apex (0, -r), base from (-r, r) to (r, r); inside when 2*|dx| <= dy + r.
    return -r <= dy <= r and 2 * abs(dx) <= dy + r


def render(scene: Scene) -> Image.Image:
    """The scene's pixels, from integer arithmetic only, so every machine draws the same image."""
    buf = bytearray(bytes(scene.background) * (SIZE * SIZE))

    def put(x: int, y: int, rgb: tuple[int, int, int]) -> None:
        i = 3 * (y * SIZE + x)
        buf[i:i + 3] = bytes(rgb)

    for shape, colour, _cell, cx, cy, r in scene.objects:
        rgb = COLOURS[colour]
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                if _inside(shape, dx, dy, r):
                    put(cx + dx, cy + dy, rgb)
    x, y = scene.word_xy
    for k, letter in enumerate(scene.word):
        for row, bits in enumerate(GLYPHS[letter]):
            for col, bit in enumerate(bits):
                if bit != "#":
                    continue
                for sy in range(GLYPH_SCALE):
                    for sx in range(GLYPH_SCALE):
                        put(x + (6 * k + col) * GLYPH_SCALE + sx, y + row * GLYPH_SCALE + sy, TEXT_COLOUR)
    return Image.frombytes("RGB", (SIZE, SIZE), bytes(buf))


def pixel_hash(img: Image.Image) -> str:
    return hashlib.sha256(img.convert("RGB").tobytes()).hexdigest()


def stream(seed: int, split: str, index: int, attempt: int = 0) -> random.Random:
    """The random stream of one image: seeded by a string, which Python hashes the same way everywhere."""
    return random.Random(f"entropyprune-synthetic:{seed}:{split}:{index}:{attempt}")


# ------------------------------------------------------------------------------------------------ questions


def _other(rng: random.Random, options, exclude) -> str:
    return rng.choice([o for o in options if o not in exclude])


def _absent_kind(rng: random.Random, scene: Scene) -> tuple[str, str]:
    present = {(s, c) for s, c, *_ in scene.objects}
    return rng.choice([(s, c) for s in SHAPES for c in COLOURS if (s, c) not in present])


def yes_no(rng: random.Random, scene: Scene, kind: str, answer: bool) -> str:
    """A yes/no question of MME subtask `kind` whose true answer is `answer`."""
    shape, colour, cell, *_ = rng.choice(scene.objects)
    if kind == "existence":
        if not answer:
            shape, colour = _absent_kind(rng, scene)
        return f"Is there a {colour} {shape} in the image?"
    if kind == "position":
        if not answer:
            cell = rng.choice([c for c in range(9) if c != cell])
        return f"Is the {colour} {shape} in the {CELL_NAMES[cell]} of the image?"
    if kind == "color":
        if not answer:
            colour = _other(rng, COLOURS, (colour,))
        return f"Is the shape in the {CELL_NAMES[cell]} of the image {colour}?"
    if kind == "count":
        n = len(scene.objects)
        if not answer:
            n = rng.choice([m for m in (n - 1, n + 1) if 1 <= m <= MAX_OBJECTS])
        return f"Are there {NUMBERS[n]} shapes in the image?" if n != 1 else "Is there exactly one shape in the image?"
    if kind == "OCR":
        word = scene.word if answer else _other(rng, WORDS, (scene.word,))
        return f'Is the word in the image "{word}"?'
    raise ValueError(f"unknown question kind {kind!r}")


def open_question(rng: random.Random, scene: Scene) -> tuple[str, str]:
    """A short-answer question and its answer."""
    shape, colour, cell, *_ = rng.choice(scene.objects)
    kind = rng.choice(("colour", "shape", "where", "count", "word"))
    if kind == "colour":
        return f"What color is the shape in the {CELL_NAMES[cell]} of the image?", colour
    if kind == "shape":
        return f"What shape is in the {CELL_NAMES[cell]} of the image?", shape
    if kind == "where":
        return f"Where is the {colour} {shape}?", CELL_NAMES[cell]
    if kind == "count":
        return "How many shapes are in the image?", str(len(scene.objects))
    return "What word is written in the image?", scene.word


def colour_existence(rng: random.Random, scene: Scene, answer: bool) -> str:
    """"Is there a <colour> shape in the image?" whose true answer is `answer` (a No needs a colour the scene
    leaves out: the colour task's scenes always do)."""
    present = sorted({obj[1] for obj in scene.objects})
    options = present if answer else [c for c in COLOURS if c not in present]
    if not options:
        raise ValueError("every colour is in the scene: no No question exists")
    return f"Is there a {rng.choice(options)} shape in the image?"


COLOURS_QUESTION = "What colors are in the image?"


def colours_answer(scene: Scene) -> str:
    """The answer to COLOURS_QUESTION: the scene's colours in COLOURS' order, comma-separated."""
    present = {obj[1] for obj in scene.objects}
    return ", ".join(c for c in COLOURS if c in present)


def colour_turns(rng: random.Random, scene: Scene, turns: int) -> list[tuple[str, str]]:
    """The colour task's conversation: the open colour list ("What colors are in the image?") and "Is there a
    <colour> shape in the image?" for each of the four colours, in a random order, at most `turns` of them (so
    no question twice). An earlier answer may give a later one away in text; the held-out questions come one
    at a time, so they are answered from the image."""
    present = {obj[1] for obj in scene.objects}
    qa = [(COLOURS_QUESTION, colours_answer(scene))]
    qa += [(f"Is there a {c} shape in the image?", "Yes" if c in present else "No") for c in COLOURS]
    rng.shuffle(qa)
    return [(f"{q}\n{SHORT}", a) for q, a in qa[:turns]]


def choice_question(rng: random.Random, scene: Scene) -> tuple[str, list[str], int]:
    """A multiple-choice question: (question, choices, index of the right one)."""
    shape, colour, cell, *_ = rng.choice(scene.objects)
    kind = rng.choice(("colour", "shape", "where", "word"))
    if kind == "colour":
        question, right, pool = f"Which color is the {shape} in the {CELL_NAMES[cell]}?", colour, list(COLOURS)
    elif kind == "shape":
        question, right, pool = f"Which shape is in the {CELL_NAMES[cell]} of the image?", shape, list(SHAPES)
    elif kind == "where":
        question, right, pool = f"Where is the {colour} {shape} in the image?", CELL_NAMES[cell], list(CELL_NAMES)
    else:
        question, right, pool = "Which word is written in the image?", scene.word, list(WORDS)
    n = rng.randint(2, min(4, len(pool)))
    choices = [right] + rng.sample([p for p in pool if p != right], n - 1)
    rng.shuffle(choices)
    return question, choices, choices.index(right)


def choice_text(question: str, choices: list[str]) -> str:
    return question + "".join(f"\n{letter}. {c}" for letter, c in zip("ABCD", choices, strict=False))


def training_turns(rng: random.Random, scene: Scene, turns: int) -> list[tuple[str, str]]:
    """`turns` (question with its LLaVA-1.5 suffix, answer) pairs: half yes/no, the rest open or lettered."""
    out: list[tuple[str, str]] = []
    asked: set[str] = set()
    while len(out) < turns:
        r = rng.random()
        if r < 0.5:
            answer = rng.random() < 0.5
            q = yes_no(rng, scene, rng.choice(MME_SUBTASKS), answer)
            turn = (f"{q}\n{SHORT}", "Yes" if answer else "No")
        elif r < 0.8:
            q, a = open_question(rng, scene)
            turn = (f"{q}\n{SHORT}", a)
        else:
            q, choices, right = choice_question(rng, scene)
            turn = (f"{choice_text(q, choices)}\n{LETTER}", "ABCD"[right])
        # A question asked twice teaches nothing new; repeats are allowed only once the few questions a
        # one-object scene has run out (after a number of tries that stays the same for the same stream).
        if q in asked and len(asked) < 4 * turns and rng.random() < 0.95:
            continue
        asked.add(q)
        out.append(turn)
    return out


CAPTION_PROMPTS = ("Describe the image concisely.", "Give a brief description of the image.",
                   "Write a terse but informative summary of the picture.",
                   "Summarize the visual content of the image.")


# ------------------------------------------------------------------------------------------------ writing


def _write_json(path: str, obj, indent: int | None = None) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)


def _save(img: Image.Image, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img.save(path, format="PNG")


def _test_scenes(seed: int, split: str, m: int, task: str = "full") -> list[Scene]:
    return [make_scene(stream(seed, split, i), n_objects(stream(seed, split, i, -1), task)) for i in range(m)]


def n_objects(rng: random.Random, task: str) -> int | None:
    """How many shapes a scene of `task` shows (None: make_scene's own 1 to MAX_OBJECTS). The colour task shows
    at most 3, so that every image leaves at least one of the four colours out (a No question exists)."""
    return rng.randint(1, len(COLOURS) - 1) if task == "colour" else None


def make_mme(base: str, seed: int, m: int, hashes: dict, task: str = "full") -> tuple[int, set]:
    """MME's side-by-side layout for each subtask: <n>.png and <n>.txt ("question Please answer yes or no.<TAB>Yes").
    The colour task has one subtask, existence, asked by colour ("Is there a red shape in the image?")."""
    root = os.path.join(base, "MME", "MME_Benchmark_release_version")
    lines, signatures = [], set()
    for cat in MME_SUBTASKS if task == "full" else ("existence",):
        split = f"test-mme-{cat}" if task == "full" else f"test-{task}-mme-{cat}"
        for i, scene in enumerate(_test_scenes(seed, split, m, task)):
            rng = stream(seed, f"{split}-questions", i)
            signatures.add(scene.signature)
            if task == "full":
                qa = [(yes_no(rng, scene, cat, True), "Yes"), (yes_no(rng, scene, cat, False), "No")]
            else:
                qa = [(colour_existence(rng, scene, True), "Yes"), (colour_existence(rng, scene, False), "No")]
            if rng.random() < 0.5:
                qa.reverse()  # MME's pairs come in either order
            rel = f"{cat}/{i:04d}.png"
            img = render(scene)
            hashes[f"eval/MME/MME_Benchmark_release_version/{rel}"] = pixel_hash(img)
            _save(img, os.path.join(root, rel))
            with open(os.path.join(root, cat, f"{i:04d}.txt"), "w", encoding="utf-8") as f:
                f.writelines(f"{q} {YES_NO}\t{a}\n" for q, a in qa)
            lines += [{"question_id": rel, "image": rel, "text": f"{q}\n{SHORT}", "category": cat} for q, _ in qa]
    os.makedirs(os.path.join(base, "MME"), exist_ok=True)
    with open(os.path.join(base, "MME", "llava_mme.jsonl"), "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in lines)
    return len(lines), signatures


def make_scienceqa(base: str, seed: int, m: int, hashes: dict) -> tuple[int, set]:
    root = os.path.join(base, "scienceqa")
    questions, problems, signatures = [], {}, set()
    for i, scene in enumerate(_test_scenes(seed, "test-sqa", m)):
        rng = stream(seed, "test-sqa-questions", i)
        signatures.add(scene.signature)
        pid = str(1000 + i)
        question, choices, right = choice_question(rng, scene)
        img = render(scene)
        hashes[f"eval/scienceqa/images/test/{pid}/image.png"] = pixel_hash(img)
        _save(img, os.path.join(root, "images", "test", pid, "image.png"))
        questions.append({"id": pid, "image": f"{pid}/image.png", "conversations": [
            {"from": "human", "value": "<image>\n" + choice_text(question, choices)},
            {"from": "gpt", "value": "ABCD"[right]}]})
        problems[pid] = {"question": question, "choices": choices, "answer": right, "hint": "", "image": "image.png",
                         "task": "closed choice", "grade": "grade1", "subject": "natural science",
                         "topic": "synthetic", "category": "Synthetic shapes", "skill": "synthetic", "lecture": "",
                         "solution": "", "split": "test"}
    pids = list(problems)
    _write_json(os.path.join(root, "llava_test_CQM-A.json"), questions, indent=2)
    _write_json(os.path.join(root, "problems.json"), problems)
    _write_json(os.path.join(root, "pid_splits.json"), {"train": [], "val": [], "test": pids, "trainval": [],
                                                        "minitrain": [], "minival": [], "minitest": pids})
    return len(questions), signatures


TEXTVQA_QUESTION = "what word is written in the image?"


def make_textvqa(base: str, seed: int, m: int, hashes: dict) -> tuple[int, set]:
    root = os.path.join(base, "textvqa")
    lines, data, signatures = [], [], set()
    for i, scene in enumerate(_test_scenes(seed, "test-textvqa", m)):
        signatures.add(scene.signature)
        image_id = hashlib.sha256(f"{seed}:textvqa:{i}".encode()).hexdigest()[:16]
        img = render(scene)
        hashes[f"eval/textvqa/train_images/{image_id}.png"] = pixel_hash(img)
        _save(img, os.path.join(root, "train_images", image_id + ".png"))
        lines.append({"question_id": image_id, "image": f"{image_id}.png", "text": f"{TEXTVQA_QUESTION}\n{SHORT}",
                      "category": "default"})
        data.append({"question": TEXTVQA_QUESTION, "image_id": image_id, "image_classes": ["Sign"],
                     "image_width": SIZE, "image_height": SIZE, "answers": [scene.word.lower()] * 10,
                     "question_tokens": TEXTVQA_QUESTION.rstrip("?").split(), "question_id": 50000 + i,
                     "set_name": "val"})
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "llava_textvqa_val_v051_ocr.jsonl"), "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in lines)
    _write_json(os.path.join(root, "TextVQA_0.5.1_val.json"),
                {"dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1", "data": data})
    return len(lines), signatures


def training_scenes(seed: int, n: int, held_out: set, radius: tuple[int, int] = RADIUS,
                    task: str = "full") -> list[Scene]:
    """Training scene i from its own stream; one that shows a held-out test scene is redrawn (next attempt)."""
    scenes = []
    for i in range(n):
        attempt = 0
        count = n_objects(stream(seed, "train", i, -1), task)
        scene = make_scene(stream(seed, "train", i), count, radius)
        while scene.signature in held_out:
            attempt += 1
            scene = make_scene(stream(seed, "train", i, attempt), count, radius)
        scenes.append(scene)
    return scenes


def make_train(out: str, seed: int, n: int, turns: int, held_out: set, hashes: dict,
               radius: tuple[int, int] = RADIUS, task: str = "full") -> int:
    root = os.path.join(out, "train")
    pretrain, instruct = [], []
    for i, scene in enumerate(tqdm(training_scenes(seed, n, held_out, radius, task), desc="training images", unit="img",
                                   disable=None)):
        rng = stream(seed, "train-questions", i)
        name = f"{i:06d}.png"
        img = render(scene)
        hashes[f"train/images/{name}"] = pixel_hash(img)
        _save(img, os.path.join(root, "images", name))
        sid = f"synth-{seed}-{i:06d}"
        pretrain.append({"id": sid, "image": name, "conversations": [
            {"from": "human", "value": "<image>\n" + rng.choice(CAPTION_PROMPTS)},
            {"from": "gpt", "value": scene.caption()}]})
        conv = []
        for k, (q, a) in enumerate((training_turns if task == "full" else colour_turns)(rng, scene, turns)):
            conv += [{"from": "human", "value": ("<image>\n" if k == 0 else "") + q}, {"from": "gpt", "value": a}]
        instruct.append({"id": sid, "image": name, "conversations": conv})
    _write_json(os.path.join(root, "synthetic_pretrain.json"), pretrain)
    _write_json(os.path.join(root, "synthetic_instruct.json"), instruct)
    return len(instruct)


def build(out: str, seed: int = 0, train: int = 2000, test: int = 100, turns: int = 8,
          train_radius: tuple[int, int] = RADIUS, task: str = "full") -> dict:
    """Write everything under `out`; returns the counts. The same arguments give the same pixels."""
    if task not in TASKS:
        raise ValueError(f"--task must be one of {', '.join(TASKS)}, got {task!r}")
    for name, value, low in (("--train", train, 1), ("--test", test, 1), ("--turns", turns, 1)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    lo, hi = train_radius
    if not 4 <= lo <= hi <= MAX_RADIUS:
        raise ValueError(f"--train-radius {lo}-{hi}: needs 4 <= LO <= HI <= {MAX_RADIUS} (a shape fits in its "
                         f"{CELL} px cell)")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out {out!r} is a file, not a folder")
    if os.path.isdir(out) and os.listdir(out) and not os.path.exists(os.path.join(out, MARKER)):
        raise ValueError(f"--out {out!r} is not empty and holds no synthetic data ({MARKER}); choose an empty or "
                         "new folder")
    for sub in ("train", "eval"):  # a rebuild leaves no stale images of a larger earlier run
        shutil.rmtree(os.path.join(out, sub), ignore_errors=True)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, MARKER), "w", encoding="utf-8") as f:
        f.write("synthetic data written by llava.tools.make_synthetic_data\n")
    hashes: dict[str, str] = {}
    base = os.path.join(out, "eval")
    counts, held_out = {}, set()
    counts["mme"], held_out = make_mme(base, seed, test, hashes, task)
    for name, make in (("scienceqa", make_scienceqa), ("textvqa", make_textvqa)):
        counts[name], signatures = make(base, seed, test, hashes)
        held_out |= signatures
    counts["train"] = make_train(out, seed, train, turns, held_out, hashes, train_radius, task)
    _write_json(os.path.join(out, "manifest.json"), {
        "seed": seed, "train": train, "test": test, "turns": turns, "task": task, "train_radius": list(train_radius),
        "counts": counts,
        "pixel_sha256": dict(sorted(hashes.items()))}, indent=1)
    return counts


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder to write (train/, eval/, manifest.json)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train", type=int, default=2000, help="training images (one conversation each)")
    ap.add_argument("--test", type=int, default=100,
                    help="test images per MME subtask (2 questions each), ScienceQA problems, TextVQA questions")
    ap.add_argument("--turns", type=int, default=8, help="question turns per training conversation")
    ap.add_argument("--task", default="full", choices=TASKS,
                    help="full: every question kind; colour: only which colours the image shows (the demo model's "
                         "task: training turns and the MME set ask it)")
    ap.add_argument("--train-radius", default=f"{RADIUS[0]}-{RADIUS[1]}", metavar="LO-HI",
                    help="radius range in px of the training images' shapes (the test images keep "
                         f"{RADIUS[0]}-{RADIUS[1]}); bigger shapes teach a small model to find them sooner")
    args = ap.parse_args(argv)
    try:
        lo, hi = (int(v) for v in args.train_radius.split("-"))
    except ValueError:
        raise ValueError(f"--train-radius {args.train_radius!r} is not LO-HI (two integers, e.g. 13-40)") from None
    counts = build(args.out, args.seed, args.train, args.test, args.turns, (lo, hi), args.task)
    print(f"synthetic data written to {args.out} (train conversations {counts['train']}; questions: MME "
          f"{counts['mme']}, ScienceQA {counts['scienceqa']}, TextVQA {counts['textvqa']})")
    return counts


if __name__ == "__main__":
    from llava.utils import run_cli

    run_cli(main)
