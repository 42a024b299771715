"""Batched answering for the drivers: collate prepared questions, generate, cut each row at its EOS.

- `Prepared`: one question ready for the model (prompt ids, pixels, image sizes), made ahead of the model
  by the driver's background loader.
- `generate_rows`: one `model.generate` call on a batch. Prompts are right-padded with an attention mask
  (`generate` re-pads them on the left, so every row's last prompt token is the last position); the pixels
  of every row with images are concatenated in row order. Each row is returned up to and including its
  first EOS, which is exactly what a run of that row alone returns (`generate` pads a finished row after its
  EOS while the others go on). A batch of one is the call the drivers made before batching existed.
- `answer_stream`: questions in, (item, new token ids) out, in question order, `batch_size` rows per model
  call. With a `window` (length bucketing) the questions are taken `window` at a time, sorted by prompt
  length inside the window (stable) and batched in that order, so rows of similar length share a batch;
  the answers still come out in question order, each as soon as every earlier one is done.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Prepared:
    input_ids: torch.Tensor  # [T] prompt ids with IMAGE_TOKEN_INDEX markers, on the host
    # [n, 3, H, W] (or a list of such tensors) for the row's n images; None: text only. LLaVA-1.6 (anyres):
    # [n, views, 3, S, S] or a list of n [views, 3, S, S] tensors, one per image (process_images' output).
    pixels: Any = None
    image_sizes: list | None = None  # (width, height) of each image
    text: str | None = None  # the instruction, for pruning methods that read it (CDPruner's `texts`)

    @property
    def num_images(self) -> int:
        if self.pixels is None:
            return 0
        if isinstance(self.pixels, torch.Tensor):
            return self.pixels.shape[0] if self.pixels.ndim in (4, 5) else 1
        return sum(p.shape[0] if p.ndim == 4 else 1 for p in self.pixels)


def prompt_length(row: Prepared, visual_tokens: int) -> int:
    """The row's spliced length: text tokens plus `visual_tokens` per image marker."""
    from llava.constants import IMAGE_TOKEN_INDEX

    markers = int((row.input_ids == IMAGE_TOKEN_INDEX).sum())
    return row.input_ids.numel() - markers + markers * visual_tokens


def _images_of(rows: list[Prepared], device, dtype, multi_view: bool = False):
    """Every row's pixels, in row order: one [N, 3, H, W] tensor, or a list when the shapes differ; for a
    LLaVA-1.6 model (`multi_view`) always a list of each image's [views, 3, S, S]."""
    if multi_view:
        views = []
        for row in rows:
            if row.pixels is not None:
                pieces = list(row.pixels) if isinstance(row.pixels, torch.Tensor) else row.pixels
                views += [p.to(device, dtype=dtype) for p in pieces]
        return views or None
    parts = []
    for row in rows:
        if row.pixels is None:
            continue
        pieces = row.pixels if isinstance(row.pixels, (list, tuple)) else [row.pixels]
        parts += [p if p.ndim == 4 else p[None] for p in pieces]
    if not parts:
        return None
    parts = [p.to(device, dtype=dtype) for p in parts]
    if all(p.shape[1:] == parts[0].shape[1:] for p in parts):
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
    return parts


def collate(rows: list[Prepared], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded prompt ids [B, T] and their attention mask (1 on real tokens)."""
    width = max(row.input_ids.numel() for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        n = row.input_ids.numel()
        ids[i, :n] = row.input_ids
        mask[i, :n] = 1
    return ids, mask


def cut_at_eos(ids: torch.Tensor, eos_token_id: int | None) -> torch.Tensor:
    """One row of generated ids up to and including its first EOS (what that row alone would return)."""
    if eos_token_id is None:
        return ids
    hits = (ids == eos_token_id).nonzero()
    return ids if hits.numel() == 0 else ids[: int(hits[0, 0]) + 1]


def generate_rows(model, rows: list[Prepared], **generate_kwargs) -> list[torch.Tensor]:
    """New token ids of each row (on the host), from one `model.generate` call on the whole batch."""
    images = _images_of(rows, model.device, model.dtype, getattr(model, "multi_view", False))
    sizes = [size for row in rows for size in (row.image_sizes or [])] or None
    if any(row.text is not None for row in rows):
        generate_kwargs = {**generate_kwargs, "texts": [row.text for row in rows]}
    with torch.inference_mode():
        if len(rows) == 1:
            out = model.generate(rows[0].input_ids[None].to(model.device), images=images, image_sizes=sizes,
                                 **generate_kwargs)
        else:
            ids, mask = collate(rows)
            out = model.generate(ids.to(model.device), images=images, image_sizes=sizes,
                                 attention_mask=mask.to(model.device), **generate_kwargs)
    out = out.cpu()
    eos = generate_kwargs.get("eos_token_id")
    eos = model.config.eos_token_id if eos is None else eos
    return [cut_at_eos(out[i], eos) for i in range(len(rows))]


def kept_counts(trace_row: list) -> list[int]:
    """Visual tokens each image of a row kept after its last pruning stage (kept plus merged)."""
    return [int(stages[-1].kept.numel()) + stages[-1].merged for stages in trace_row if stages]


def stage_counts(trace_row: list) -> list[tuple[int, list[tuple[int, int]]]]:
    """Per pruned image of a row: (its visual tokens before pruning, [(layer, tokens after that stage), ...],
    whether its budget was capped at its V)."""
    return [(int(stages[0].length), [(int(st.layer), int(st.kept.numel()) + st.merged) for st in stages],
             bool(getattr(stages[0], "capped", False))) for stages in trace_row if stages]


def _answer_window(model, window: list[tuple[Any, Prepared]], batch_size: int, bucket: bool,
                   generate_kwargs: dict, with_counts: bool = False, with_stages: bool = False) -> Iterator[tuple]:
    order = list(range(len(window)))
    if bucket:
        tower = model.get_vision_tower()
        visual = tower.num_patches if tower is not None else 0
        lengths = [prompt_length(prepared, visual) for _, prepared in window]
        order.sort(key=lambda i: lengths[i])  # stable: equal lengths keep question order
    done: dict[int, torch.Tensor] = {}
    emitted = 0
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        outs = generate_rows(model, [window[i][1] for i in batch], **generate_kwargs)
        trace = model.get_model().prune_trace if with_counts or with_stages else None
        for row, (i, ids) in enumerate(zip(batch, outs, strict=True)):
            got = (ids,)
            if with_counts:
                got += (kept_counts(trace[row]) if trace else [],)
            if with_stages:
                got += (stage_counts(trace[row]) if trace else [],)
            done[i] = got
        while emitted in done:
            yield (window[emitted][0], *done.pop(emitted))
            emitted += 1


def answer_stream(model, pairs: Iterable[tuple[Any, Prepared]], batch_size: int = 1, window: int | None = None,
                  with_counts: bool = False, with_stages: bool = False, **generate_kwargs) -> Iterator[tuple]:
    """(item, new token ids) for every (item, prepared) of `pairs`, in their order; with `with_counts`,
    (item, ids, visual tokens each of the row's images kept), for methods that choose their own count; with
    `with_stages`, also each pruned image's :func:`stage_counts` (its V and what each stage left), last.

    An error raised while `pairs` is read (an image that cannot be decoded) is raised after the answers of
    every item before it, so a failing question stops the run where it would at batch size 1.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if window is not None and window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    size = max(window or batch_size, batch_size)
    bucket = window is not None and size > 1
    pairs = iter(pairs)
    try:
        while True:
            gathered: list[tuple[Any, Prepared]] = []
            error: Exception | None = None
            try:
                for pair in pairs:
                    gathered.append(pair)
                    if len(gathered) == size:
                        break
            except Exception as err:  # raised below, after the answers gathered before it
                error = err
            yield from _answer_window(model, gathered, batch_size, bucket, generate_kwargs, with_counts,
                                      with_stages)
            if error is not None:
                raise error
            if len(gathered) < size:
                return
    finally:
        close = getattr(pairs, "close", None)  # stop a background loader when the run stops early
        if close is not None:
            close()
