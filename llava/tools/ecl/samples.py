"""The ECL tool's inputs: question files (LLaVA jsonl, ScienceQA json, MMBench tsv), sampling, dataset specs."""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass

from llava.eval import load_json, read_jsonl


@dataclass
class Sample:
    question_id: str
    text: str
    image_path: str | None = None
    image_b64: str | None = None

    def load_image(self):
        from llava.mm_utils import load_image, load_image_from_base64

        if self.image_b64 is not None:
            return load_image_from_base64(self.image_b64).convert("RGB")
        return load_image(self.image_path)


def _strip_image_marker(text: str) -> str:
    # The prompt builder puts the one <image> marker first; a marker inside the text would add a second.
    return text.replace("<image>", "").strip()


def load_samples(question_file: str, image_folder: str | None) -> list[Sample]:
    """The items with an image of a LLaVA question file.

    Formats: ``.jsonl`` with ``{"question_id", "image", "text"}`` (LLaVA's eval files); a ``.json`` list,
    either of such records or ScienceQA's ``{"id", "image", "conversations": [...]}``; an MMBench
    ``.tsv`` (base64 images; no image folder needed). Items without an image are skipped.
    """
    if not os.path.isfile(question_file):
        raise FileNotFoundError(f"question file not found: {question_file}")
    ext = os.path.splitext(question_file)[1].lower()
    if ext == ".tsv":
        return _load_tsv(question_file)
    if image_folder is None:
        raise ValueError(f"{question_file}: give the image folder its 'image' paths are relative to")
    if ext == ".jsonl":
        records = [(f"{question_file}:{n}", r) for n, r in read_jsonl(question_file, "question file")]
    elif ext == ".json":
        data = load_json(question_file, "question file")
        if not isinstance(data, list):
            raise ValueError(f"{question_file}: expected a JSON list of questions (ScienceQA's format)")
        records = [(f"{question_file}[{i}]", r) for i, r in enumerate(data)]
    else:
        raise ValueError(f"{question_file}: unknown question file type {ext!r}; use .jsonl, .json or .tsv")
    samples = []
    for where, rec in records:
        if not isinstance(rec, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(rec).__name__}")
        if not rec.get("image"):
            continue
        if "text" in rec:
            text = rec["text"]
        elif isinstance(rec.get("conversations"), list) and rec["conversations"]:
            text = rec["conversations"][0].get("value", "")
        else:
            raise ValueError(f"{where}: no 'text' (LLaVA jsonl) or 'conversations' (ScienceQA) field")
        qid = rec.get("question_id", rec.get("id", where))
        samples.append(Sample(str(qid), _strip_image_marker(str(text)), os.path.join(image_folder, rec["image"])))
    return samples


def _load_tsv(path: str) -> list[Sample]:
    from llava.eval.eval_mmbench import is_missing, read_tsv
    from llava.eval.model_vqa_mmbench import build_question, get_options

    _, rows = read_tsv(path)
    samples = []
    for row in rows:
        if is_missing(row.get("image")):
            continue
        # The prompt exactly as the MMBench driver builds it.
        text = build_question({"question": "", **row}, get_options(row))
        samples.append(Sample(row["index"].strip(), text, image_b64=row["image"]))
    return samples


def choose_samples(samples: list[Sample], n: int, seed: int) -> list[Sample]:
    """``n`` samples drawn without replacement with ``seed``, in file order; all of them when n <= 0."""
    if n <= 0 or n >= len(samples):
        return list(samples)
    picked = sorted(random.Random(seed).sample(range(len(samples)), n))
    return [samples[i] for i in picked]


@dataclass
class Dataset:
    name: str
    question_file: str
    image_folder: str | None


def parse_dataset_spec(spec: str) -> Dataset:
    """``NAME=QFILE:IMGDIR`` (or ``NAME=QFILE`` for an MMBench TSV)."""
    name, sep, rest = spec.partition("=")
    if not sep or not name or not rest:
        raise ValueError(f"--dataset {spec!r}: expected NAME=QUESTION_FILE:IMAGE_FOLDER")
    qfile, sep, folder = rest.rpartition(":")
    if not sep:
        qfile, folder = rest, None
    return Dataset(name, qfile, folder or None)


def _default_name(question_file: str, taken: set[str]) -> str:
    # playground/data/eval/<Benchmark>/<file>: the benchmark folder names the dataset.
    parent = os.path.basename(os.path.dirname(os.path.abspath(question_file)))
    stem = os.path.splitext(os.path.basename(question_file))[0]
    for name in (parent, stem, f"{parent}/{stem}"):
        if name and name not in taken:
            return name
    raise ValueError(f"two datasets with the same question file {question_file}; name them with --dataset")


def datasets_from_args(question_files: Sequence[str], image_folders: Sequence[str], specs: Sequence[str]):
    """Datasets from ``--dataset`` specs and ``--question-file``/``--image-folder`` pairs.

    Image folders pair, in order, with the question files that need one (all but MMBench TSVs).
    """
    datasets = [parse_dataset_spec(s) for s in specs]
    needing = [q for q in question_files if not q.lower().endswith(".tsv")]
    if len(image_folders) != len(needing):
        raise ValueError(
            f"{len(needing)} --question-file(s) need an image folder but {len(image_folders)} --image-folder(s) "
            "were given; give one --image-folder per --question-file (MMBench .tsv files need none)"
        )
    folders = iter(image_folders)
    taken = {d.name for d in datasets}
    for q in question_files:
        folder = None if q.lower().endswith(".tsv") else next(folders)
        name = _default_name(q, taken)
        taken.add(name)
        datasets.append(Dataset(name, q, folder))
    if not datasets:
        raise ValueError("give at least one dataset: --question-file Q --image-folder DIR, or --dataset NAME=Q:DIR")
    names = [d.name for d in datasets]
    if len(set(names)) != len(names):
        raise ValueError(f"dataset names must be distinct, got {names}")
    return datasets
