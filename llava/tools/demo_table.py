"""What pruning costs on a model that sees: accuracy and prefill time per method and budget on an MME-style set.

Used by ``llava.tools.demo`` (``make demo``) on the synthetic task's trained model and held-out questions, but it
takes any LLaVA checkpoint and any folder in MME's side-by-side layout (``<subtask>/<n>.png`` with ``<n>.txt``
holding ``question<TAB>Yes|No`` lines). Each question is asked as the MME script asks it (LLaVA's
``llava_mme.jsonl`` text: the question and "Answer the question using a single word or phrase."), answered
greedily, and read with MME's own rule (``llava.eval.eval_mme.parse_pred``).

- accuracy: the share of questions answered right, in %; chance is 50 (every image has one Yes and one No
  question);
- acc+: the share of images whose two questions are both right (MME's second number);
- prefill: the median over batches of one prefill forward pass (prompt and image in, logits out; no
  decoding), divided by the batch size, in milliseconds per question, measured after one warm-up batch;
- kept: visual tokens per image after the pruning stage (the prune trace's count), and the average over all
  layers (``avg``), the papers' convention.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass

import torch
from PIL import Image

from entropyprune.config import PruneConfig
from llava.conversation import build_prompt
from llava.decoding import decode_answer
from llava.eval.batching import Prepared, _images_of, answer_stream, collate
from llava.eval.eval_mme import IMAGE_EXTS, LLAVA_SUFFIX, YES_NO_SUFFIX, parse_pred
from llava.mm_utils import process_images, tokenizer_image_token


@dataclass
class Question:
    category: str
    image: str  # path
    text: str  # the question alone
    answer: str  # "yes" or "no"


def load_questions(mme_dir: str) -> list[Question]:
    """Every question of an MME-layout folder, subtasks in name order. Both of MME's layouts: ``<subtask>/<n>.txt``
    beside its image, and ``<subtask>/images/`` with ``<subtask>/questions_answers_YN/`` (any image extension
    MME's scorer reads)."""
    if not os.path.isdir(mme_dir):
        raise FileNotFoundError(f"no MME folder at {mme_dir!r}")
    out = []
    for cat in sorted(os.listdir(mme_dir)):
        cat_dir = os.path.join(mme_dir, cat)
        if not os.path.isdir(cat_dir):
            continue
        image_dir = qa_dir = cat_dir
        if os.path.isdir(os.path.join(cat_dir, "images")):
            image_dir, qa_dir = os.path.join(cat_dir, "images"), os.path.join(cat_dir, "questions_answers_YN")
            if not os.path.isdir(qa_dir):
                raise FileNotFoundError(f"{cat_dir} has images/ but no questions_answers_YN/")
        stems = {os.path.splitext(n)[0]: n for n in sorted(os.listdir(image_dir))
                 if os.path.splitext(n)[1].lower() in IMAGE_EXTS}
        for name in sorted(os.listdir(qa_dir)):
            if not name.endswith(".txt"):
                continue
            if name[:-4] not in stems:
                raise FileNotFoundError(f"{os.path.join(qa_dir, name)} has no image "
                                        f"{os.path.join(image_dir, name[:-4])}.png (or .jpg)")
            image = os.path.join(image_dir, stems[name[:-4]])
            with open(os.path.join(qa_dir, name), encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    q, sep, a = line.rstrip("\n").partition("\t")
                    if not sep or a.lower() not in ("yes", "no"):
                        raise ValueError(f"{os.path.join(qa_dir, name)}:{lineno}: expected 'question<TAB>Yes|No'")
                    q = q.removesuffix(" " + YES_NO_SUFFIX)
                    out.append(Question(cat, image, q, a.lower()))
    if not out:
        raise ValueError(f"no questions under {mme_dir!r} (expected <subtask>/<n>.png and <n>.txt)")
    return out


def prepare(questions: list[Question], tokenizer, processor, model_config, conv_mode: str = "vicuna_v1"):
    """The prompts and pixels, made once and shared by every row of the table."""
    pixels_of: dict[str, tuple] = {}
    rows = []
    for q in questions:
        if q.image not in pixels_of:
            img = Image.open(q.image).convert("RGB")
            pixels_of[q.image] = (process_images([img], processor, model_config), [img.size])
        prompt = build_prompt(f"{q.text}\n{LLAVA_SUFFIX}", conv_mode)
        ids = tokenizer_image_token(prompt, tokenizer, return_tensors="pt")
        pixels, sizes = pixels_of[q.image]
        rows.append(Prepared(ids, pixels, sizes, q.text))
    return rows


@dataclass
class Row:
    label: str
    accuracy: float
    acc_plus: float
    per_category: dict[str, float]
    prefill_ms: float
    kept: float | None  # visual tokens per image after pruning (mean); None: unpruned
    avg_tokens: float | None
    answers: list[str]


def _score(questions: list[Question], answers: list[str]) -> tuple[float, float, dict[str, float]]:
    right = [parse_pred(a.strip()) == q.answer for q, a in zip(questions, answers, strict=True)]
    by_cat: dict[str, list[bool]] = {}
    by_image: dict[str, list[bool]] = {}
    for q, ok in zip(questions, right, strict=True):
        by_cat.setdefault(q.category, []).append(ok)
        by_image.setdefault(q.image, []).append(ok)
    acc = 100 * sum(right) / len(right)
    acc_plus = 100 * sum(all(v) for v in by_image.values()) / len(by_image)
    return acc, acc_plus, {k: 100 * sum(v) / len(v) for k, v in by_cat.items()}


def _prefill_ms(model, rows: list[Prepared], batch_size: int) -> float:
    """Median milliseconds per question of one prefill forward pass per batch (the first batch is a warm-up)."""
    times = []
    batches = [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
    for k, batch in enumerate([batches[0]] + batches):
        ids, mask = collate(batch)
        pixels = _images_of(batch, model.device, model.dtype, getattr(model, "multi_view", False))
        sizes = [s for r in batch for s in r.image_sizes]
        texts = [r.text for r in batch]
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.inference_mode():
            model(ids.to(model.device), images=pixels, image_sizes=sizes, attention_mask=mask.to(model.device),
                  texts=texts)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        if k:
            times.append((time.perf_counter() - t0) * 1000 / len(batch))
    return statistics.median(times)


def run_row(model, tokenizer, questions, rows, label: str, cfg: PruneConfig | None, batch_size: int = 8,
            max_new_tokens: int = 3) -> Row:
    """One row of the table: answer every question with `cfg` (None: unpruned), score, time the prefill."""
    model.set_prune(cfg)
    answers, kept = [], []
    stream = answer_stream(model, enumerate(rows), batch_size=batch_size, with_counts=True,
                           max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id)
    for _, ids, counts in stream:
        answers.append(decode_answer(tokenizer, ids))
        kept += counts
    acc, acc_plus, per_cat = _score(questions, answers)
    ms = _prefill_ms(model, rows, batch_size)
    n_kept = avg = None
    if cfg is not None and kept:
        n_kept = sum(kept) / len(kept)
        v = model.get_vision_tower().num_patches
        layers = model.config.num_hidden_layers
        k = cfg.layer if isinstance(cfg.layer, int) else 0
        avg = (k * v + (layers - k) * n_kept) / layers
    model.set_prune(None)
    return Row(label, acc, acc_plus, per_cat, ms, n_kept, avg, answers)


def format_table(rows: list[Row], visual_tokens: int) -> str:
    cats = list(rows[0].per_category)
    head = ["method", "kept", "avg", "accuracy", "acc+", *cats, "prefill ms/q", "speedup"]
    base = rows[0].prefill_ms
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        kept = f"{r.kept:.0f}" if r.kept is not None else str(visual_tokens)
        avg = f"{r.avg_tokens:.0f}" if r.avg_tokens is not None else str(visual_tokens)
        cells = [r.label, kept, avg, f"{r.accuracy:.1f}", f"{r.acc_plus:.1f}",
                 *(f"{r.per_category[c]:.1f}" for c in cats), f"{r.prefill_ms:.1f}", f"{base / r.prefill_ms:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
