"""The pruning hook that the language model calls before each pruning layer during prefill.

`PruneHook` is built before the layer loop from the splice record (where each image's tokens sit, in
python ints) and the method's schedule of stages, so every stage's token layout is planned on the host:
which slots survive, where kept and merged tokens go, which rows end up padded, the positions. At a
stage's layer it only runs device work: ask the method which tokens to keep (one call per group of
images with the same token count), gather the kept hidden states and their position ids, and write any
replacement or merged embeddings. No host-device synchronisation happens there.

Only visual tokens are pruned; system and text tokens always stay, in their original order. Each image is
pruned on its own, with the budget of its own token count V (LLaVA-1.6 images of different shapes have
different V; a budget above an image's V keeps all of it, ``PruneRecord.capped``). LLaVA-1.6's
image_newline tokens are visual tokens like the others, unless
``PruneConfig.keep_newlines``: then the method sees and budgets only an image's other tokens (V minus its
newlines) and every newline stays, in its place in slot order.

Rows keep the padding side of the splice (left for generation). Kept tokens keep their
original (gapped) position ids, or, for methods whose official code renumbers (PDrop, SparseVLM), get
contiguous ones; then every later layer's cache remembers the offset, so decoding continues as the
official code does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from entropyprune.config import PruneConfig
from entropyprune.inputs import PruneInputs, StageContext
from entropyprune.methods import Stage, as_selection, get_spec


@dataclass
class PruneRecord:
    """One stage of one image of one batch row (read by tests, the ECL tool, reports and benchmarks)."""

    layer: int  # the stage ran before this decoder layer
    start: int  # where the image's tokens began in the (padded) prefill sequence
    length: int  # the image's visual tokens before any pruning
    kept: torch.Tensor  # [keep] index of each kept token in the original span, slot order; -1: a merged token
    scores: torch.Tensor  # one float per token the stage saw (its input: earlier stages' survivors)
    merged: int = 0  # tokens the method merged and placed after the kept ones at this stage
    capped: bool = False  # per-image V (LLaVA-1.6): the budget exceeded this image's V, so it kept all of them


def _host(values) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=torch.long)
    # Pinned host memory makes the copies at layer K asynchronous: no wait inside the layer loop.
    return t.pin_memory() if torch.cuda.is_available() else t


def check_prune_config(cfg: PruneConfig, model_config, num_visual: int | None = None) -> list[Stage]:
    """Validate `cfg` against the model; returns the stages for `num_visual` tokens per image (576 by default)."""
    if not isinstance(cfg, PruneConfig):
        raise TypeError(f"expected a PruneConfig or None, got {type(cfg).__name__}")
    if cfg.adaptive:  # its counts are chosen per image at run time: nothing to plan or check here
        return []
    return cfg.schedule(model_config.num_hidden_layers, num_visual or 576)


@dataclass
class _Group:
    """Images with the same original token count: the same schedule, one method call per stage."""

    members: list  # (row, image index in the row)
    stages: list  # [Stage]
    original: list = field(default_factory=list)  # per stage: [I, v] device tensor of original indices
    first: torch.Tensor | None = None  # [I] host: each image's first slot in the splice (input_embeds)
    newlines: int = 0  # keep_newlines: image_newline tokens each member keeps on top of its stages' budget
    newline_spans: list = field(default_factory=list)  # keep_newlines: per member, newline offsets in its span
    newline_pos: list = field(default_factory=list)  # per stage: [I, newlines] device positions after it
    capped: bool = False  # the budget exceeded the members' V (see PruneConfig.image_schedule)

    def out(self, s: int) -> int:
        """Tokens each member holds after stage `s` (newlines kept on top of the stage's output)."""
        return self.stages[s].out + self.newlines


@dataclass
class _StagePlan:
    layer: int
    index: torch.Tensor  # [B, T_new] source slot of every new slot (kept image slots filled at run time)
    valid: torch.Tensor  # [B, T_new]
    positions: torch.Tensor | None  # [B, T_new] renumbered position ids, or None to gather the old ones
    padded: bool  # any row shorter than T_new after the stage
    offset: torch.Tensor | None  # [B] original next position minus the renumbered one (renumber only)
    last_slot: torch.Tensor  # [B] in the layout before the stage
    text_slots: torch.Tensor  # [B, Lt]
    text_mask: torch.Tensor  # [B, Lt]
    groups: list  # per group: (rows, current first slot, new first slot) host tensors


class PruneHook:
    def __init__(self, cfg: PruneConfig, splice, model_config, trace: list | None = None):
        self.cfg = cfg
        spec = get_spec(cfg.method)
        self.method = spec.fn
        self.options = cfg.method_options()
        self.renumber = (spec.positions(self.options) if spec.positions else "keep") == "renumber"
        num_layers = model_config.num_hidden_layers
        self.trace = trace if trace is not None else []
        self.trace.clear()
        self.image_spans = splice.image_spans
        self.splice_embeds = splice.inputs_embeds
        left = splice.padding_side == "left"
        t0 = splice.inputs_embeds.shape[1]
        prompt_lengths = getattr(splice, "prompt_lengths", None) or splice.lengths
        tails = [n - p for n, p in zip(splice.lengths, prompt_lengths, strict=True)]  # generated tokens after

        # Groups of images by original size (and, keeping newlines, their number), each with its schedule.
        layouts = getattr(splice, "image_layouts", None)
        keep_newlines = getattr(cfg, "keep_newlines", False)
        by_size: dict[tuple[int, int], _Group] = {}
        for b, spans in enumerate(splice.image_spans):
            for j, (_start, v) in enumerate(spans):
                layout = layouts[b][j] if layouts and j < len(layouts[b]) else None
                n_nl = layout.num_newlines if keep_newlines and layout is not None else 0
                if (v, n_nl) not in by_size:
                    if layout is not None:  # V is this image's own: a budget above it keeps all of it
                        stages, capped = cfg.image_schedule(num_layers, v - n_nl)
                    else:
                        stages, capped = cfg.schedule(num_layers, v - n_nl), False
                    by_size[(v, n_nl)] = _Group([], stages, newlines=n_nl, capped=capped)
                by_size[(v, n_nl)].members.append((b, j))
                if n_nl:
                    by_size[(v, n_nl)].newline_spans.append(layout.newline.nonzero()[:, 0])
        self.groups = list(by_size.values())
        for g in self.groups:
            g.first = _host([splice.image_spans[b][j][0] for b, j in g.members])
        layers = sorted({s.layer for g in self.groups for s in g.stages})
        for g in self.groups:
            if [s.layer for s in g.stages] != layers:
                raise ValueError("every image must be pruned at the same layers")
        self.layers = layers
        self._stage_of_layer = {k: i for i, k in enumerate(layers)}

        # Each row as pieces: ("text", first source slot, count) or ("image", group, member, count).
        member_of = {m: (gi, mi) for gi, g in enumerate(self.groups) for mi, m in enumerate(g.members)}
        rows = []
        for b, (spans, n_real) in enumerate(zip(splice.image_spans, splice.lengths, strict=True)):
            off = t0 - n_real if left else 0
            pieces, cursor = [], off
            for j, (start, v) in enumerate(spans):
                if start > cursor:
                    pieces.append(["text", start - cursor])
                pieces.append(["image", *member_of[(b, j)], v])
                cursor = start + v
            if off + n_real > cursor:
                pieces.append(["text", off + n_real - cursor])
            rows.append(pieces)
        self.orig_text = self._text_slots(rows, [t0 - n if left else 0 for n in splice.lengths], tails)
        # Known on the host, so a method can reject a prompt it cannot handle without a device sync.
        self.text_lengths = [self._text_length(pieces, tail) for pieces, tail in zip(rows, tails, strict=True)]

        self.plans: list[_StagePlan] = []
        cur_shift = [t0 - n if left else 0 for n in splice.lengths]
        for s, layer in enumerate(layers):
            lengths = [sum(p[-1] for p in pieces) for pieces in rows]
            last = [cur_shift[b] + lengths[b] - 1 - tails[b] for b in range(len(rows))]
            text_slots, text_mask = self._text_slots(rows, cur_shift, tails)
            new_rows = [[p[:-1] + [self.groups[p[1]].out(s)] if p[0] == "image" else list(p) for p in pieces]
                        for pieces in rows]
            new_lengths = [sum(p[-1] for p in pieces) for pieces in new_rows]
            new_t = max(new_lengths)
            new_shift = [new_t - n if left else 0 for n in new_lengths]
            index = torch.zeros(len(rows), new_t, dtype=torch.long)
            valid = torch.zeros(len(rows), new_t, dtype=torch.bool)
            cur_first = {}
            new_first = {}
            for b, (pieces, new_pieces) in enumerate(zip(rows, new_rows, strict=True)):
                src, dst = cur_shift[b], new_shift[b]
                for p, q in zip(pieces, new_pieces, strict=True):
                    if p[0] == "text":
                        index[b, dst:dst + p[-1]] = torch.arange(src, src + p[-1])
                    else:
                        cur_first[(p[1], p[2])] = src
                        new_first[(p[1], p[2])] = dst
                    src += p[-1]
                    dst += q[-1]
                valid[b, new_shift[b]:new_shift[b] + new_lengths[b]] = True
            positions = offset = None
            if self.renumber:
                positions = (valid.long().cumsum(1) - 1).clamp(min=0)
                offset = torch.tensor([lengths[b] - new_lengths[b] for b in range(len(rows))], dtype=torch.long)
                # Offsets add up over stages: relative to the original numbering, not the previous stage.
                if self.plans:
                    offset = offset + self.plans[-1].offset
            groups = []
            for gi, g in enumerate(self.groups):
                keys = [(gi, mi) for mi in range(len(g.members))]
                groups.append((_host([g.members[mi][0] for _, mi in keys]), _host([cur_first[k] for k in keys]),
                               _host([new_first[k] for k in keys])))
            pin = torch.cuda.is_available()
            self.plans.append(_StagePlan(
                layer, index.pin_memory() if pin else index, valid.pin_memory() if pin else valid,
                None if positions is None else (positions.pin_memory() if pin else positions),
                any(n < new_t for n in new_lengths), offset, _host(last), text_slots, text_mask, groups))
            rows, cur_shift = new_rows, new_shift
        self.padded_after = {p.layer: p.padded for p in self.plans}
        self._records: dict = {}

    @staticmethod
    def _text_slots(rows, shifts, tails):
        """The instruction of each row: its text after the last image, up to the end of the prompt."""
        out = []
        for b, pieces in enumerate(rows):
            cursor, after = shifts[b], None
            for p in pieces:
                if p[0] == "image":
                    after = cursor + p[-1]
                cursor += p[-1]
            end = cursor - tails[b]
            out.append(list(range(after, end)) if after is not None else [])
        width = max(1, max(len(s) for s in out))
        slots = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.bool)
        for b, s in enumerate(out):
            slots[b, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[b, : len(s)] = True
        return _host(slots), (mask.pin_memory() if torch.cuda.is_available() else mask)

    @staticmethod
    def _text_length(pieces, tail):
        """How many instruction tokens (text after the last image, to the prompt end) a row has; None
        for a row without images."""
        last = max((i for i, p in enumerate(pieces) if p[0] == "image"), default=None)
        return None if last is None else sum(p[-1] for p in pieces[last + 1:]) - tail

    def offset(self, layer: int):
        """Position offset of the cache segment that starts at `layer` (renumbering methods), or None."""
        return self.plans[self._stage_of_layer[layer]].offset

    def __call__(self, layer: int, hidden, position_ids, valid, capture: dict, model=None):
        s = self._stage_of_layer[layer]
        plan = self.plans[s]
        device = hidden.device

        def dev(x):
            return x.to(device, non_blocking=True)

        text_slots, text_mask = plan.text_slots, plan.text_mask
        # The capture dict is refilled by later layers: the stage keeps its own references to layer K-1's states.
        ctx = StageContext(layer, hidden, dict(capture), position_ids, valid, dev(plan.last_slot), dev(text_slots),
                           dev(text_mask), model, self.splice_embeds, dev(self.orig_text[0]),
                           dev(self.orig_text[1]), text_lengths=self.text_lengths)
        # A copy: the kept positions are written into it, and the plan itself stays as built.
        index = plan.index.to(device, non_blocking=True, copy=True)
        work = []
        for g, (rows, cur_first, new_first) in zip(self.groups, plan.groups, strict=True):
            stage = g.stages[s]
            v = (g.out(s - 1) if s else self.image_spans[g.members[0][0]][g.members[0][1]][1])
            rows, cur_first, new_first = dev(rows), dev(cur_first), dev(new_first)
            positions = torch.arange(v, device=device)[None].expand(len(g.members), -1)
            if s == 0:
                original = positions
            else:
                original = g.original[s - 1]
            newline_pos = candidates = None
            if g.newlines:  # the method sees the other tokens only: their positions, in slot order
                newline_pos = dev(torch.stack(g.newline_spans)) if s == 0 else g.newline_pos[s - 1]
                is_newline = torch.zeros(len(g.members), v, dtype=torch.long, device=device).scatter_(1, newline_pos, 1)
                candidates = is_newline.sort(dim=1, stable=True).indices[:, : v - g.newlines]
                positions = candidates
            span = self.image_spans[g.members[0][0]][g.members[0][1]][1]
            original_slots = dev(g.first)[:, None] + torch.arange(span, device=device)[None]
            inputs = PruneInputs(config=self.cfg, options=self.options, context=ctx, rows=rows,
                                 slots=cur_first[:, None] + positions, original=original.gather(1, positions),
                                 original_slots=original_slots)
            ctx.groups.append(inputs)
            work.append((g, stage, rows, cur_first, new_first, inputs, original, candidates, newline_pos))
        writes = []
        for g, stage, rows, cur_first, new_first, inputs, original_all, candidates, newline_pos in work:
            sel = as_selection(self.method(inputs, stage.keep))
            kept = sel.kept
            if g.newlines:
                if sel.embeds is not None or stage.merged:
                    raise NotImplementedError(f"--prune-keep-newlines is not supported with {self.cfg.method!r}, "
                                              "which replaces or merges tokens; drop the flag")
                # The kept tokens and every newline, back in slot order; where the newlines land is the next
                # stage's newline_pos.
                kept, order = torch.cat([candidates.gather(1, kept), newline_pos], dim=1).sort(dim=1)
                g.newline_pos[s:] = [order.argsort(dim=1)[:, stage.keep:]]
            # kept: positions in the current span (with keep_newlines, the newlines too), ascending
            n_kept = kept.shape[1]
            new_slots = new_first[:, None] + torch.arange(n_kept, device=device)[None]
            index[rows[:, None], new_slots] = cur_first[:, None] + kept
            if sel.embeds is not None:
                writes.append((rows, new_slots, sel.embeds))
            original = original_all.gather(1, kept)
            if stage.merged:
                if sel.merged is None or sel.merged.shape[1] != stage.merged:
                    raise RuntimeError(f"method {self.cfg.method!r} must return {stage.merged} merged tokens")
                merged_slots = new_first[:, None] + stage.keep + torch.arange(stage.merged, device=device)[None]
                writes.append((rows, merged_slots, sel.merged))
                original = torch.cat([original, original.new_full((len(g.members), stage.merged), -1)], dim=1)
            if len(g.original) > s:
                g.original[s] = original
            else:
                g.original.append(original)
            for i, (b, j) in enumerate(g.members):
                start = self.image_spans[b][j][0]
                self._records.setdefault((b, j), []).append(
                    PruneRecord(layer, start, self.image_spans[b][j][1], original[i, :n_kept], sel.scores[i],
                                stage.merged, g.capped))
        new_hidden = hidden.gather(1, index[..., None].expand(-1, -1, hidden.shape[-1]))
        for rows, slots, values in writes:
            new_hidden[rows[:, None], slots] = values.to(new_hidden.dtype)
        if plan.positions is not None:
            new_pos = dev(plan.positions)
        else:
            new_pos = position_ids.gather(1, index)
        if s == len(self.plans) - 1:
            self.trace[:] = [[self._records[(b, j)] for j in range(len(spans))]
                             for b, spans in enumerate(self.image_spans)]
        return new_hidden, new_pos, dev(plan.valid)
