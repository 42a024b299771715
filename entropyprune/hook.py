"""The pruning hook that the language model calls at layer K during prefill.

`PruneHook` is built before the layer loop from the splice record (where each image's tokens sit, in
python ints), so the new token layout is planned on the host. At layer K it only runs device work: gather
each image's states from layer K-1, ask the configured method which tokens to keep, and gather the kept
hidden states and their original (gapped) position ids. No host-device synchronisation happens there.

Only visual tokens are pruned; system and text tokens always stay, in their original order. Each image is
pruned on its own to N tokens. Rows keep the padding side of the splice (left for generation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from entropyprune.config import PruneConfig
from entropyprune.methods import PruneInputs, get_method


@dataclass
class PruneRecord:
    """What was pruned for one image of one batch row (read by tests, the ECL tool and the efficiency tool)."""

    layer: int
    start: int  # where the image's tokens began in the (padded) prefill sequence
    length: int  # visual tokens before pruning
    kept: torch.Tensor  # ascending LongTensor, relative to the span
    scores: torch.Tensor  # one float per visual token


def _host_tensor(values: list[int]) -> torch.Tensor:
    t = torch.tensor(values, dtype=torch.long)
    return t.pin_memory() if torch.cuda.is_available() else t


def check_prune_config(cfg: PruneConfig, model_config, num_visual: int | None = None) -> int:
    """Validate `cfg` against the model; returns N kept per image for `num_visual` tokens (576 by default)."""
    if not isinstance(cfg, PruneConfig):
        raise TypeError(f"expected a PruneConfig or None, got {type(cfg).__name__}")
    if cfg.stage != "llm":
        raise NotImplementedError(f"method {cfg.method!r} prunes before the language model; not wired in yet")
    return cfg.resolve(model_config.num_hidden_layers, num_visual or 576)


class PruneHook:
    def __init__(self, cfg: PruneConfig, splice, model_config, trace: list | None = None):
        self.cfg = cfg
        self.layer = cfg.layer
        self.method = get_method(cfg.method)
        num_layers = model_config.num_hidden_layers
        self.trace = trace if trace is not None else []
        self.trace.clear()

        t = splice.inputs_embeds.shape[1]
        left = splice.padding_side == "left"
        rows_src = []  # per row: the source position of each slot of the new (pruned) row
        images = []  # (row, start, V, N, first slot in the unpadded new row)
        for b, (spans, n_real) in enumerate(zip(splice.image_spans, splice.lengths, strict=True)):
            off = t - n_real if left else 0
            src, cursor = [], off
            for start, v in spans:
                n = cfg.resolve(num_layers, v)
                src.extend(range(cursor, start))
                images.append((b, start, v, n, len(src)))
                src.extend([start] * n)  # placeholders, filled with the kept positions at layer K
                cursor = start + v
            src.extend(range(cursor, off + n_real))
            rows_src.append(src)
        new_t = max(len(src) for src in rows_src)
        # Rows keep the splice's padding side: left padding shifts a row's slots by its padding.
        shift = [new_t - len(src) if left else 0 for src in rows_src]
        index = torch.zeros(len(rows_src), new_t, dtype=torch.long)
        valid = torch.zeros(len(rows_src), new_t, dtype=torch.bool)
        for b, src in enumerate(rows_src):
            index[b, shift[b]:shift[b] + len(src)] = torch.tensor(src, dtype=torch.long)
            valid[b, shift[b]:shift[b] + len(src)] = True
        self.padded = any(len(src) < new_t for src in rows_src)
        if torch.cuda.is_available():
            # Pinned host memory makes the copies at layer K asynchronous: no wait inside the layer loop.
            index, valid = index.pin_memory(), valid.pin_memory()
        self.index, self.valid = index, valid
        # Images sharing (V, N) are scored in one batched call. Their index tensors are built here, on the
        # host, so that layer K only issues non-blocking copies.
        self.groups: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
        for b, start, v, n, slot in images:
            self.groups.setdefault((v, n), []).append((b, start, slot + shift[b]))
        self.group_index = {
            key: tuple(_host_tensor([m[j] for m in members]) for j in range(3)) for key, members in self.groups.items()
        }
        self.image_spans = splice.image_spans

    def __call__(self, hidden, position_ids, valid, capture: dict):
        device = hidden.device
        states_all = capture[self.cfg.states]  # [B, h, T, d_h], post-RoPE, from layer K-1
        # A copy: the kept positions are written into it, and the plan itself stays as built.
        index = self.index.to(device, non_blocking=True, copy=True)
        records = {}
        for (v, n), members in self.groups.items():
            rows, starts, slots = (x.to(device, non_blocking=True) for x in self.group_index[(v, n)])
            span = starts[:, None] + torch.arange(v, device=device)[None]  # [I, V]
            states = states_all[rows[:, None], :, span]  # [I, V, h, d_h]
            inputs = PruneInputs(states=states, hidden=hidden[rows[:, None], span], num_heads=states.shape[2],
                                 config=self.cfg)
            kept, scores = self.method(inputs, n)
            index[rows[:, None], slots[:, None] + torch.arange(n, device=device)[None]] = starts[:, None] + kept
            for i, (b, start, _slot) in enumerate(members):
                records[(b, start)] = PruneRecord(self.layer, start, v, kept[i], scores[i])
        self.trace[:] = [[records[(b, s)] for s, _v in spans] for b, spans in enumerate(self.image_spans)]
        new_hidden = hidden.gather(1, index[..., None].expand(-1, -1, hidden.shape[-1]))
        new_pos = position_ids.gather(1, index)
        return new_hidden, new_pos, self.valid.to(device, non_blocking=True)
