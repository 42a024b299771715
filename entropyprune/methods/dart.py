"""DART (Wen et al., 2025; ZichenWen1/DART): keep the image tokens least similar to a few pivot tokens.

The official rule (``get_retained_image_token`` in ``llava/model/language_model/modeling_llama_self.py``),
at layer K (default 2), before layer K runs:

* take layer K-1's post-RoPE key states, the heads concatenated into one vector per token, and their L1
  norms; the ``pivot_image`` image tokens with the largest norms are the image pivots, the ``pivot_text``
  instruction tokens (the text after the image up to the prompt's end) with the largest norms the text
  pivots;
* compare tokens by cosine similarity after the model's final RMSNorm, applied to the hidden states
  entering layer K;
* the candidates are the image tokens other than the image pivots; the pivots are visited in the order
  CPython iterates ``set(image pivot positions + text pivot positions)`` (positions in topk order), and
  each takes the ``per_pivot`` remaining candidates least similar to it, removing them from the
  candidates;
* kept: the image pivots and every taken token (text pivots are only references), in their original
  order; kept tokens keep their original position ids, and the kept set is fixed for the generation.

``per_pivot`` is DART's TOKEN_TOPK, ``max_num_trunction // (pivot_image + pivot_text)``, so an image keeps
``pivot_image + (pivot_image + pivot_text) * per_pivot`` tokens (132 for the scripts' 128). With
``max_num_trunction = 0`` (the default here) it comes from our budget instead: the most tokens of that
form within it (see :func:`schedule`). ``reduction_ratio``, the scripts' first argument, only matters in
the official code when ``max_num_trunction`` is None, which its command line cannot give: it is not an
option here.

The iteration order of a Python set is reproduced on the device by :func:`cpython_set_order`, which
replays CPython's own insertions (no host-device synchronisation). Scores and similarities are computed
in the model's dtype, as the official code does (fp16 there); ties are broken toward the lower index,
where the official code has whatever ``torch.topk`` returns on CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from entropyprune.methods import PruneInputs, Selection, Stage, register

OPTION = "--prune-option"

# ---------------------------------------------------------------------------------------------------------
# CPython's set iteration order (Objects/setobject.c), for a set built from a list of distinct ints >= 0


_MINSIZE = 8  # PySet_MINSIZE: a new set's table has 8 slots
_LINEAR_PROBES = 9  # slots looked at after a taken one, when they all lie inside the table
_PERTURB_SHIFT = 5
# A hash (an int in [0, 2**61 - 1) is its own hash) is shifted right by 5 bits per probe round; after 13
# rounds nothing is left of it, and from then on the round's slot follows i -> 5i + 1 (mod size), which
# visits every slot within `size` rounds. So 13 + size rounds always reach a free slot.
_HASH_ROUNDS = 13


def _insertions(count: int) -> list[tuple[str, int]]:
    """What ``set(list of count distinct keys)`` does to its table, from the count alone: a list of
    ("add", mask) for each key in list order and ("resize", new mask) after the key that fills the table
    to 3/5 (``fill * 5 >= mask * 3``, to the smallest power of two above 4 * used)."""
    events, mask = [], _MINSIZE - 1
    for used in range(1, count + 1):
        events.append(("add", mask))
        if used * 5 >= mask * 3:
            minused = used * 2 if used > 50000 else used * 4
            size = _MINSIZE
            while size <= minused:
                size <<= 1
            mask = size - 1
            events.append(("resize", mask))
    return events


_CONSTANTS: dict = {}


def _probe_constants(mask: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """For a table of ``mask + 1`` slots and R rounds: ``lead[r] = 5**r`` and ``back[s-1] = 5**-s``
    (5 is invertible modulo a power of two), modulo the table size, and the shifts ``5s`` (at most 63)
    of rounds s = 1..R-1."""
    key = (mask, str(device))
    if key not in _CONSTANTS:
        size = mask + 1
        rounds = _HASH_ROUNDS + size
        lead = [pow(5, r, size) for r in range(rounds)]
        back = [pow(5, -s, size) for s in range(1, rounds)]
        shifts = [min(_PERTURB_SHIFT * s, 63) for s in range(1, rounds)]
        out = [torch.tensor(x, dtype=torch.long) for x in (lead, back, shifts)]
        if device.type == "cuda":
            # Pinned + non_blocking: a pageable host-to-device copy would make the host wait (once per mask).
            out = [x.pin_memory().to(device, non_blocking=True) for x in out]
        else:
            out = [x.to(device) for x in out]
        _CONSTANTS[key] = tuple(out)
    return _CONSTANTS[key]


def _probe_slots(values: Tensor, mask: int) -> tuple[Tensor, Tensor]:
    """Every slot an insertion of each value may look at, in CPython's order, and whether it does.

    Round 0 starts at ``h & mask``; round r at ``(5 * start_{r-1} + 1 + (h >> 5r)) & mask``, which unrolls
    to ``5**r (start_0 + sum_{s<=r} 5**-s (1 + (h >> 5s)))``, all modulo the (power-of-two) table size: a
    cumulative sum. Each round looks at its start and, when ``start + 9 <= mask``, at the 9 slots after
    it. Returns ``slots [..., R * 10]`` and ``used [..., R * 10]`` (False for the linear slots a round
    skips).
    """
    lead, back, shifts = _probe_constants(mask, values.device)
    first = values & mask
    steps = (back * ((1 + (values[..., None] >> shifts)) & mask)) & mask  # [..., R-1]
    sums = torch.cat([first[..., None], first[..., None] + steps.cumsum(-1)], dim=-1)  # [..., R]
    starts = (lead * (sums & mask)) & mask
    offsets = torch.arange(_LINEAR_PROBES + 1, device=values.device)
    slots = starts[..., None] + offsets  # [..., R, 10]
    used = (offsets == 0) | (starts[..., None] + _LINEAR_PROBES <= mask)
    slots = torch.where(used, slots, 0)
    return slots.flatten(-2), used.flatten(-2)


def _insert(table: Tensor, slots: Tensor, used: Tensor, key: Tensor) -> None:
    """Put ``key [I]`` into ``table [I, size]`` (-1 = empty) at the first free slot of its probes."""
    free = used & (table.gather(1, slots) < 0)
    first = free.to(torch.int32).argmax(dim=1, keepdim=True)  # the first True
    table.scatter_(1, slots.gather(1, first), key[:, None])


def _table_order(table: Tensor, count: int) -> Tensor:
    """The keys of ``table [I, size]`` in slot order (how a set iterates), ``[I, count]``."""
    slots = torch.sort((table < 0).to(torch.uint8), dim=1, stable=True).indices[:, :count]
    return table.gather(1, slots)


def cpython_set_order(values: Tensor) -> Tensor:
    """``order [I, P]`` such that ``values[i, order[i]]`` is ``list(set(values[i].tolist()))``.

    ``values [I, P]`` must hold distinct ints in [0, 2**61 - 1) per row (there an int is its own hash).
    Replays CPython's ``set_add_entry`` for each key in list order, ``set_table_resize`` (keys re-inserted
    in old-table order) when the table is 3/5 full, and iterates the final table, for all rows at once on
    their device, without a host-device synchronisation. Objects/setobject.c of CPython 3.11; checked against the
    real sets of CPython 3.7, 3.10 (the official code's), 3.11, 3.12 and 3.13.
    """
    rows, count = values.shape
    device = values.device
    values = values.long()
    probes: dict[int, tuple[Tensor, Tensor]] = {}

    def probes_for(mask: int) -> tuple[Tensor, Tensor]:
        if mask not in probes:
            probes[mask] = _probe_slots(values, mask)  # [I, P, L] each
        return probes[mask]

    table = torch.full((rows, _MINSIZE), -1, dtype=torch.long, device=device)
    added = 0
    for event, mask in _insertions(count):
        if event == "add":
            slots, used = probes_for(mask)
            key = torch.full((rows,), added, dtype=torch.long, device=device)
            _insert(table, slots[:, added], used[:, added], key)
            added += 1
        else:
            old = _table_order(table, added)  # [I, added]
            slots, used = probes_for(mask)
            table = torch.full((rows, mask + 1), -1, dtype=torch.long, device=device)
            width = slots.shape[-1]
            for j in range(added):
                key = old[:, j]
                pick = key[:, None, None].expand(-1, 1, width)
                _insert(table, slots.gather(1, pick)[:, 0], used.gather(1, pick)[:, 0], key)
    return _table_order(table, count)


# ---------------------------------------------------------------------------------------------------------
# Options and schedule


@dataclass
class Options:
    """DART's options, with the official scripts' defaults (``--pivot_image_token 4 --pivot_text_token 4``).

    ``max_num_trunction`` M (the official spelling): when > 0, each pivot takes ``M // (pivot_image +
    pivot_text)`` tokens, as the official code does, and the --prune-keep/-avg-tokens/-ratio budget is
    ignored; 0 (the default) derives the count from that budget instead.
    """

    pivot_image: int = 4
    pivot_text: int = 4
    max_num_trunction: int = 0

    def check(self) -> None:
        for name in ("pivot_image", "pivot_text", "max_num_trunction"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.pivot_image + self.pivot_text < 1:
            raise ValueError("pivot_image + pivot_text must be >= 1 (DART needs at least one pivot)")


def _budget_flag(config) -> str:
    from entropyprune.config import FLAGS

    name = next(n for n in ("keep", "avg_tokens", "ratio") if getattr(config, n) is not None)
    return f"{FLAGS[name]} {getattr(config, name)}"


def schedule(config, options: Options, num_layers: int, num_visual: int) -> list[Stage]:
    """One stage at layer K keeping ``pivot_image + (pivot_image + pivot_text) * per_pivot`` tokens.

    ``per_pivot`` = ``max_num_trunction // (pivot_image + pivot_text)`` when max_num_trunction > 0 (the
    official count; the budget flags are then ignored), else ``(N - pivot_image) // (pivot_image +
    pivot_text)`` for our budget's N = ``config.resolve(L, V)``: the largest DART count within N (N = 98,
    the 128-token average at K = 2 of 32 layers, keeps 92; --prune-keep 132 keeps 132, as M = 128 does).
    The stage records the count actually kept.
    """
    pi, pivots, m = options.pivot_image, options.pivot_image + options.pivot_text, options.max_num_trunction
    if num_visual < pi:
        raise ValueError(f"dart: an image has {num_visual} visual tokens, fewer than the {pi} image pivots "
                         f"({OPTION} pivot_image={pi}); lower pivot_image")
    if m > 0:
        layer = config._check_layer(num_layers)
        per = m // pivots
        keep = pi + pivots * per
        if keep > num_visual:
            raise ValueError(f"dart: {OPTION} max_num_trunction={m} takes {pivots} x {per} tokens besides the "
                             f"{pi} image pivots, {keep} in all, more than the {num_visual} visual tokens of an "
                             f"image; use max_num_trunction < {num_visual - pi + 1}")
    else:
        layer = config.layer
        n = config.resolve(num_layers, num_visual)
        if n < pi:
            raise ValueError(f"dart: {_budget_flag(config)} keeps {n} visual tokens, fewer than the {pi} image "
                             f"pivots DART always keeps ({OPTION} pivot_image={pi}); keep at least {pi}")
        per = (n - pi) // pivots
        keep = pi + pivots * per
    if keep < 1:
        where = f"{OPTION} max_num_trunction={m}" if m > 0 else _budget_flag(config)
        raise ValueError(f"dart: {where} keeps no visual token: with pivot_image=0 each of the {pivots} pivots "
                         f"must take at least one, so keep at least {pivots}")
    return [Stage(layer, keep)]


# ---------------------------------------------------------------------------------------------------------
# The method


def _top_desc(scores: Tensor, n: int) -> Tensor:
    """Indices of the n largest scores per row in descending order (ties: lower index first), as the
    order of ``torch.topk``'s indices (which the set is built from)."""
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :n]


def _check_instructions(inputs: PruneInputs, need: int) -> None:
    lengths = getattr(inputs.context, "text_lengths", None) or []
    short = [n for n in lengths if n is not None and n < need]
    if short:
        raise ValueError(f"dart: a prompt has only {min(short)} instruction token(s) after its last image, "
                         f"fewer than the {need} text pivots ({OPTION} pivot_text={need}); the official code "
                         "cannot pick them either: lower pivot_text")


@register("dart", options=Options, schedule=schedule, positions=lambda options: "keep")
def dart(inputs: PruneInputs, n_keep: int) -> Selection:
    opts: Options = inputs.options if inputs.options is not None else Options()
    pi, pt = opts.pivot_image, opts.pivot_text
    pivots = pi + pt
    per = (n_keep - pi) // pivots
    if n_keep < pi or pi + pivots * per != n_keep:
        raise ValueError(f"dart keeps pivot_image + (pivot_image + pivot_text) * k tokens ({pi} + {pivots}k); "
                         f"cannot keep {n_keep}")
    _check_instructions(inputs, pt)
    ctx = inputs.context
    rows, slots = inputs.rows, inputs.slots  # [I], [I, v]
    images, v = slots.shape
    if v - pi < pivots * per:
        raise ValueError(f"dart: {v} image tokens leave {v - pi} candidates, fewer than {pivots} x {per}")
    text_slots, text_mask = inputs.text_slots  # [I, Lt]

    # Pivots: largest L1 norms of layer K-1's keys, heads concatenated (one vector per token).
    keys = inputs.image_states("key")  # [I, v, h_kv, d]
    image_norm = torch.linalg.vector_norm(keys.flatten(2), ord=1, dim=-1)  # [I, v]
    image_pivots = _top_desc(image_norm, pi)  # [I, pi] indices into the image, topk order
    text_keys = ctx.capture["key"][rows[:, None], :, text_slots]  # [I, Lt, h_kv, d]
    text_norm = torch.linalg.vector_norm(text_keys.flatten(2), ord=1, dim=-1)
    text_norm = text_norm.masked_fill(~text_mask, float("-inf"))
    text_pivots = text_slots.gather(1, _top_desc(text_norm, pt))  # [I, pt] slots of the row

    # The set holds sequence positions (the official batch-1 indices): the tokens' position ids.
    positions = ctx.position_ids[rows[:, None], torch.cat([slots.gather(1, image_pivots), text_pivots], 1)]
    order = cpython_set_order(positions)  # [I, pivots] into [image pivots..., text pivots...]

    # Similarities after the final norm of the hidden states entering layer K.
    image_vecs = inputs.final_norm(inputs.hidden)  # [I, v, D]
    text_vecs = inputs.final_norm(ctx.hidden[rows[:, None], text_pivots])  # [I, pt, D]
    pivot_vecs = torch.cat([image_vecs.gather(1, image_pivots[..., None].expand(-1, -1, image_vecs.shape[-1])),
                            text_vecs], 1)  # [I, pivots, D]

    # scores: pivots + 1 for an image pivot, pivots - t for a token the t-th pivot took, 0 for the rest.
    scores = torch.zeros(images, v, dtype=torch.float32, device=slots.device)
    scores.scatter_(1, image_pivots, float(pivots + 1))
    candidate = torch.ones(images, v, dtype=torch.bool, device=slots.device)
    candidate.scatter_(1, image_pivots, False)
    every = torch.arange(images, device=slots.device)
    if per > 0:
        # Every pivot's cosine similarity to every image token in one batched product (the norms once),
        # as F.cosine_similarity computes it: x.y / max(|x| |y|, eps).
        image_norms = torch.linalg.vector_norm(image_vecs, dim=-1)  # [I, v]
        pivot_norms = torch.linalg.vector_norm(pivot_vecs, dim=-1)  # [I, pivots]
        cosine = torch.einsum("ivd,ipd->ipv", image_vecs, pivot_vecs) / (
            image_norms[:, None, :] * pivot_norms[:, :, None]).clamp_min(1e-8)  # [I, pivots, v]
        for t in range(pivots):
            dissimilar = -cosine[every, order[:, t]]  # [I, v]
            dissimilar = dissimilar.masked_fill(~candidate, float("-inf"))
            taken = _top_desc(dissimilar, per)  # [I, per]
            candidate.scatter_(1, taken, False)
            scores.scatter_(1, taken, float(pivots - t))
    kept = torch.sort(_top_desc(scores, n_keep), dim=-1).values
    return Selection(kept, scores)
