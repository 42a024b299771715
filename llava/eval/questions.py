"""What a benchmark driver plugs into `llava.eval.driver.run`: its questions as `Item`s, and how an answer
line is made and keyed. Also LLaVA's jsonl question files (MME, TextVQA, MM-Vet) and RGB image loading."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from llava.eval import EvalInputError, read_jsonl


@dataclass
class Item:
    """One answer to produce: what the model is asked and what the answer line records."""

    question_id: Any
    prompt: str  # the answer's `prompt` field (LLaVA's `cur_prompt`)
    question: str  # the user turn without the image marker (suffix included)
    load_image: Callable[[], Any] | None = None  # returns a PIL image; None for a text-only question
    # With num_images > 1, load_image returns that many PIL images, each shown under its own marker line.
    num_images: int = 1
    image_path: str | None = None  # checked before the model is loaded
    extra: dict = field(default_factory=dict)  # benchmark-specific answer fields (MMBench)
    source: str = ""  # "file:line", for error messages


@dataclass
class Benchmark:
    """What a driver plugs into `run`."""

    name: str
    # args -> rows (the unit LLaVA chunks on: a question line, a TSV row, a JSON element)
    load_rows: Callable[[argparse.Namespace], list]
    # (row, args) -> the answers that row produces (MMBench --all-rounds: one per round)
    expand: Callable[[Any, argparse.Namespace], list[Item]]
    # answer line (or an item's stub of one) -> the key that says "this question is answered"
    answer_key: Callable[[Mapping], tuple]
    # (item, text, answer_id, model_id) -> the answer line, fields in LLaVA's order
    make_record: Callable[[Item, str, str, str], dict] | None = None
    # flags that change the answers beyond the common ones (recorded in the sidecar, checked on resume)
    options: Callable[[argparse.Namespace], dict] = lambda args: {}


def default_record(item: Item, text: str, answer_id: str, model_id: str) -> dict:
    return {"question_id": item.question_id, "prompt": item.prompt, "text": text, "answer_id": answer_id,
            "model_id": model_id, "metadata": {}}


def prompt_key(record: Mapping) -> tuple:
    # MME and TextVQA repeat a question_id for every question about one image, so the prompt is part of the key.
    return (str(record["question_id"]), record["prompt"])


def answer_stub(bench: Benchmark, item: Item) -> dict:
    make = bench.make_record or default_record
    return make(item, "", "", "")


def items_of(bench: Benchmark, rows: list, args: argparse.Namespace) -> list[Item]:
    return [item for row in rows for item in bench.expand(row, args)]



def read_question_jsonl(path: str, required: Iterable[str] = ("question_id", "image", "text")) -> list[tuple]:
    """LLaVA's question jsonl as (record, "file:line") pairs; a bad line is an error naming file and line."""
    path = os.path.expanduser(path)
    rows = read_jsonl(path, "LLaVA question file", required, fix="See docs/Evaluation.md for where the "
                      "benchmark files go.")
    return [(record, f"{path}:{lineno}") for lineno, record in rows]


def open_rgb(path: str):
    """Open an image as RGB.

    Every driver converts before padding. LLaVA's loader and model_vqa do it themselves; for ScienceQA and
    MMBench LLaVA left it to transformers 4.37's CLIP processor, whose conversion was PIL's convert("RGB")
    after padding, which gives the same pixels as converting first. Current processors alpha-composite onto
    white instead, so leaving it to them would turn transparent backgrounds white where LLaVA saw black.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise EvalInputError(f"image file not found: {path}. Check --image-folder.") from None
    except (UnidentifiedImageError, OSError) as err:
        raise EvalInputError(f"cannot read image {path}: {err}") from None


def jsonl_benchmark(name: str) -> Benchmark:
    """LLaVA's jsonl question files (`{"question_id", "image", "text", ...}`): MME, TextVQA, MM-Vet.

    The prompt is the line's text as it is (the suffix is already in the file); images are converted to
    RGB as LLaVA's loader and model_vqa do.
    """

    def load_rows(args):
        return read_question_jsonl(args.question_file)

    def expand(row, args):
        line, source = row
        for key in ("image", "text"):  # LLaVA's files hold strings here; anything else is a broken line
            if not isinstance(line[key], str) or not line[key]:
                raise EvalInputError(f"{source}: {key!r} must be a non-empty string, got {line[key]!r}")
        qid = line["question_id"]  # a string or an integer in LLaVA's files; it keys the answers
        if isinstance(qid, bool) or not isinstance(qid, (str, int)) or qid == "":
            raise EvalInputError(f"{source}: 'question_id' must be a string or an integer, got {qid!r}")
        path = os.path.join(os.path.expanduser(args.image_folder), line["image"])
        return [Item(question_id=line["question_id"], prompt=line["text"], question=line["text"],
                     load_image=lambda: open_rgb(path), image_path=path, source=source)]

    return Benchmark(name=name, load_rows=load_rows, expand=expand, answer_key=prompt_key)
