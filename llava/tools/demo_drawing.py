"""Drawing and writing helpers for the demo benchmark data (`llava.tools.make_demo_data`).

Images are coloured shapes and words on a plain background, in sizes that vary so the padding path of
the image preprocessing is used; files are written the way each benchmark ships them.
"""

from __future__ import annotations

import base64
import io
import json
import os
import random

from PIL import Image, ImageDraw

COLORS = {"red": (210, 40, 40), "green": (40, 160, 60), "blue": (40, 70, 200), "yellow": (230, 200, 40),
          "black": (20, 20, 20), "orange": (240, 140, 30)}
SHAPES = ("circle", "square", "triangle")
WORDS = ("STOP", "EXIT", "OPEN", "SALE", "CAFE", "PARK", "BUS", "TAXI")


def draw_scene(rng: random.Random, shapes: list[tuple[str, str]], words: tuple[str, ...] = (),
               size: tuple[int, int] | None = None, mode: str = "RGB") -> Image.Image:
    """Shapes (shape, colour) laid out left to right, words below; sizes vary so the padding path is used."""
    w, h = size or (rng.choice((96, 120, 144)), rng.choice((72, 96, 120)))
    background = tuple(rng.randint(200, 245) for _ in range(3))
    img = Image.new("RGB", (w, h), background)
    draw = ImageDraw.Draw(img)
    n = max(len(shapes), 1)
    cell = w // n
    r = max(6, min(cell, h) // 4)
    for i, (shape, colour) in enumerate(shapes):
        cx, cy = cell * i + cell // 2, h // 3
        box = (cx - r, cy - r, cx + r, cy + r)
        fill = COLORS[colour]
        if shape == "circle":
            draw.ellipse(box, fill=fill)
        elif shape == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    for j, word in enumerate(words):
        draw.text((4, h * 2 // 3 + 10 * j - 6), word, fill=(0, 0, 0))
    if mode == "RGBA":
        # Transparent border: the case where LLaVA's RGB conversion (not alpha compositing) matters.
        rgba = img.convert("RGBA")
        alpha = Image.new("L", (w, h), 0)
        ImageDraw.Draw(alpha).rectangle((4, 4, w - 5, h - 5), fill=255)
        rgba.putalpha(alpha)
        return rgba
    return img


def save_image(img: Image.Image, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if path.lower().endswith((".jpg", ".jpeg")):
        img.convert("RGB").save(path, format="JPEG", quality=90)
    else:
        img.save(path, format="PNG")


def png_base64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def write_json(path: str, obj, indent: int | None = None) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent, ensure_ascii=False)
        f.write("\n")


def write_jsonl(path: str, records: list[dict]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def write_tsv(path: str, columns: tuple[str, ...], rows: list[dict]) -> None:
    """A VLMEvalKit / MMBench TSV: header row, tab-separated, no quoting (the demo cells hold no tabs)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("\t".join(columns) + "\n")
        for r in rows:
            f.write("\t".join(str(r.get(c, "")) for c in columns) + "\n")
