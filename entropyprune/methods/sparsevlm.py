"""SparseVLM (Zhang et al., ICML 2025; Gumpest/SparseVLMs): text-guided pruning with token recycling.

The version reproduced is the ICML one: the repository's main branch with its default ``USE_VERSION=1_0``
(commit 26a5f48), whose algorithm is the ``v1.5`` branch's. Per prefill:

* Text raters, once, from the prompt's input embeddings: ``softmax(V T^T)`` over the text axis (V the
  image's embeddings, T those of the instruction, every token after the image), averaged over the visual
  tokens; the raters are the text tokens strictly above the mean of that average.
* At each official pruning location l (default 2, 6, 15) layer l runs in full and its output is pruned,
  so here the stages are layers l+1 scoring with layer l's attention (``source="previous"``). A visual
  token's score is the attention the raters pay it, averaged over the heads and then over the raters;
  the top ``min(k_s, v-1)`` of the current v visual tokens stay (so one token always goes).
* Recycling: of the d deleted tokens, the top ``int(0.3 d) + 1`` by the same score are clustered
  (DPC-kNN on their hidden states after layer l) into ``int(m / 10) + 1`` clusters; each cluster's mean
  is a new visual token, placed after the kept ones in the order of the cluster centres' rank.
* Positions are renumbered contiguously after each stage (decoding continues from each layer's own
  count, as the official code's per-layer cache length does).

The budget is one of the official per-budget schedules (``--prune-avg-tokens`` 192/128/96/64), or
``--prune-option token_list=a,b,c``. See docs/Methods.md for what differs from the official code (float32
scores, ties to the lower index, no random tie-break noise in the density).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from entropyprune.budget import as_fraction
from entropyprune.methods import PruneInputs, Selection, Stage, register, top_n

# The official kept counts per stage for each budget (score.py, USE_VERSION=1_0).
TOKEN_LISTS: dict[int, tuple[int, ...]] = {
    192: (300, 200, 110),
    128: (303, 110, 36),
    96: (238, 48, 26),
    64: (66, 30, 17),
}


@dataclass
class Options:
    token_list: tuple[int, ...] = ()  # kept visual tokens per stage; empty: the official list of the budget
    pruning_loc: tuple[int, ...] = (2, 6, 15)  # official layer indices l (layer l runs in full; stage l+1)
    recycle: bool = True  # cluster part of the deleted tokens into new tokens
    recycle_ratio: float = 0.3  # of d deleted tokens, int(ratio * d) + 1 are recycled
    cluster_divisor: int = 10  # m recycled tokens make int(m / divisor) + 1 clusters
    positions: str = field(default="renumber", metadata={"choices": ("renumber", "keep")})

    def check(self) -> None:
        loc = self.pruning_loc
        if not loc or any(i < 0 for i in loc) or any(b <= a for a, b in zip(loc, loc[1:], strict=False)):
            raise ValueError(f"pruning_loc must be increasing layer indices >= 0, got {_show(loc)}")
        if any(k < 1 for k in self.token_list):
            raise ValueError(f"token_list must hold counts >= 1, got {_show(self.token_list)}")
        if self.token_list and len(self.token_list) != len(loc):
            raise ValueError(f"token_list={_show(self.token_list)} needs one count per pruning location "
                             f"(pruning_loc={_show(loc)})")
        if not 0 <= self.recycle_ratio < 1:
            raise ValueError(f"recycle_ratio must be in [0, 1), got {self.recycle_ratio}")
        if self.cluster_divisor < 2:
            raise ValueError(f"cluster_divisor must be >= 2 (fewer clusters than tokens), got {self.cluster_divisor}")
        if self.positions == "keep" and self.recycle:
            raise ValueError("positions=keep needs recycle=false: merged tokens have no original position")


def _show(values: tuple) -> str:
    return ",".join(str(v) for v in values) or "(empty)"


def recycle_counts(deleted: int, ratio: float, divisor: int) -> tuple[int, int]:
    """``(m, c)``: recycled tokens ``int(ratio * d) + 1`` and their clusters ``int(m / divisor) + 1``.

    The ratio is taken as the decimal it is written as (0.3 is 3/10), so the floor is exact; for 0.3 this
    equals the official float ``int(d * 0.3)`` for every d below 2000.
    """
    m = math.floor(as_fraction(ratio) * deleted) + 1
    return m, m // divisor + 1


def _token_list(config, options: Options) -> tuple[int, ...]:
    if options.token_list:
        return options.token_list  # the budget flag is then ignored
    t = as_fraction(config.avg_tokens) if config.avg_tokens is not None else None
    if t is None or t.denominator != 1 or int(t) not in TOKEN_LISTS:
        if config.avg_tokens is not None:
            given = f"--prune-avg-tokens {config.avg_tokens}"
        elif config.keep is not None:
            given = f"--prune-keep {config.keep}"
        else:
            given = f"--prune-ratio {config.ratio}"
        budgets = ", ".join(str(b) for b in TOKEN_LISTS)
        raise ValueError(
            f"sparsevlm supports the official budgets --prune-avg-tokens {budgets} (got {given}); "
            "--prune-option token_list=a,b,c sets the kept visual tokens per stage directly "
            "(the budget flag is then ignored)"
        )
    counts = TOKEN_LISTS[int(t)]
    if len(options.pruning_loc) != len(counts):
        raise ValueError(
            f"--prune-option pruning_loc={_show(options.pruning_loc)} has {len(options.pruning_loc)} locations "
            f"but the official list for --prune-avg-tokens {int(t)} has {len(counts)} counts; give "
            "--prune-option token_list=... with one count per location"
        )
    return counts


def schedule(config, options: Options, num_layers: int, num_visual: int) -> list[Stage]:
    """One stage per pruning location l, at layer l+1, keeping ``min(k_s, v-1)`` of the current v tokens
    and adding the merged ones (``Stage.merged``); the next stage starts from ``keep + merged``."""
    counts = _token_list(config, options)
    stages, v = [], num_visual
    for loc, k in zip(options.pruning_loc, counts, strict=True):
        if loc + 1 > num_layers - 1:
            raise ValueError(
                f"--prune-option pruning_loc={_show(options.pruning_loc)}: location {loc} is pruned before layer "
                f"{loc + 1}, but a {num_layers}-layer model allows locations 0..{num_layers - 2}"
            )
        keep = min(k, v - 1)
        if keep < 1:
            raise ValueError(
                f"sparsevlm: only {v} visual token(s) reach pruning location {loc}, and the official rule keeps "
                "at most v-1; use a larger --prune-option token_list or recycle=true"
            )
        merged = recycle_counts(v - keep, options.recycle_ratio, options.cluster_divisor)[1] if options.recycle else 0
        stages.append(Stage(loc + 1, keep, merged))
        v = keep + merged
    return stages


def _positions(options: Options) -> str:
    return options.positions


# ------------------------------------------------------------------------------------------ the rule
def raters(inputs: PruneInputs) -> tuple[Tensor, Tensor]:
    """``([I, Q] query slots, [I, Q] bool)``: the text raters of each image, in the current layout.

    Chosen from the input embeddings (before layer 0), so every stage finds the same ones: for each
    visual token a softmax over the instruction's tokens of the dot products, averaged over the visual
    tokens; raters score strictly above the average over the instruction. Where none does (all equal,
    e.g. one text token, for which the official code would average over nothing), every instruction
    token rates; a row without any text after the image falls back to its last prompt token.
    """
    ctx = inputs.context
    rows = inputs.rows
    embeds = ctx.input_embeds[rows]  # [I, T0, D]
    dim = embeds.shape[-1]
    vis = embeds.gather(1, inputs.original_slots[..., None].expand(-1, -1, dim)).float()  # [I, V0, D]
    t_orig = ctx.text_slots_original[rows]
    mask = ctx.text_mask_original[rows]  # [I, Lt]
    txt = embeds.gather(1, t_orig[..., None].expand(-1, -1, dim)).float()  # [I, Lt, D]
    logits = (vis @ txt.transpose(1, 2)).masked_fill(~mask[:, None, :], float("-inf"))  # [I, V0, Lt]
    relevance = torch.where(mask, torch.softmax(logits, dim=-1).mean(dim=1), 0.0)  # [I, Lt]
    mean = relevance.sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp(min=1)
    chosen = mask & (relevance > mean)
    chosen = chosen | (mask & ~chosen.any(1, keepdim=True))
    no_text = ~mask.any(1, keepdim=True)
    cur_slots, _ = inputs.text_slots  # the same instruction tokens, where they sit now
    return torch.cat([cur_slots, inputs.last_slot[:, None]], 1), torch.cat([chosen, no_text], 1)


def scores_of(inputs: PruneInputs) -> Tensor:
    """``[I, v]``: layer l's attention of the raters to each current visual token, mean over heads, then
    over the raters (float32)."""
    slots, use = raters(inputs)
    attn = inputs.attention(slots, source="previous").mean(dim=2)  # [I, Q, v]
    attn = torch.where(use[..., None], attn, 0.0)  # padding slots may hold NaN rows
    return attn.sum(1) / use.sum(1, keepdim=True)


def dpc_knn_merge(x: Tensor, clusters: int) -> Tensor:
    """DPC-kNN clustering of ``x`` ``[I, m, D]`` into ``clusters`` mean tokens ``[I, c, D]`` (float32).

    Distances: L2 / sqrt(D). Density: exp(-mean squared distance to the c nearest tokens, itself
    included). delta: the distance to the nearest denser token (the largest distance of the image when
    none is denser). Centres: the c largest delta * density, in that rank order, ties to the lower index.
    Every token joins its nearest centre (ties: the better-ranked), each centre its own cluster; a merged
    token is its cluster's plain mean (sum / (count + 1e-6), as the official code divides).
    """
    n_img, m, dim = x.shape
    if not 1 <= clusters <= m:
        raise ValueError(f"cannot make {clusters} clusters of {m} tokens")
    xf = x.float()
    dist = torch.cdist(xf, xf, compute_mode="donot_use_mm_for_euclid_dist") / math.sqrt(dim)  # [I, m, m]
    nearest = torch.topk(dist, clusters, dim=-1, largest=False).values
    density = torch.exp(-(nearest**2).mean(dim=-1))  # [I, m]
    denser = density[:, None, :] > density[:, :, None]  # [I, i, j]: token j is denser than token i
    far = dist.flatten(1).max(dim=-1).values[:, None, None]
    delta = torch.where(denser, dist, far).min(dim=-1).values
    centres = torch.sort(delta * density, dim=-1, descending=True, stable=True).indices[:, :clusters]  # [I, c]
    rank = torch.arange(clusters, device=x.device)
    assign = dist.gather(1, centres[..., None].expand(-1, -1, m)).argmin(dim=1)  # [I, m]: first minimum
    assign = assign.scatter(1, centres, rank[None].expand(n_img, -1))
    member = (assign[:, None, :] == rank[None, :, None]).float()  # [I, c, m]
    return (member @ xf) / (member.sum(-1, keepdim=True) + 1e-6)


@register("sparsevlm", options=Options, schedule=schedule, positions=_positions)
def sparsevlm(inputs: PruneInputs, n_keep: int) -> Selection:
    opts = inputs.options
    scores = scores_of(inputs)
    kept = top_n(scores, n_keep)
    if not opts.recycle:
        return Selection(kept, scores)
    v = scores.shape[1]
    m, c = recycle_counts(v - n_keep, opts.recycle_ratio, opts.cluster_divisor)
    is_kept = torch.zeros_like(scores, dtype=torch.bool).scatter(1, kept, True)
    # Deleted tokens by descending score (ties: lower index), then the kept ones: the first m are recycled.
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    order = order.gather(1, torch.sort(is_kept.gather(1, order).to(torch.uint8), dim=-1, stable=True).indices)
    hidden = inputs.hidden  # [I, v, D]: layer l's output, what the official code clusters
    recycled = hidden.gather(1, order[:, :m, None].expand(-1, -1, hidden.shape[-1]))
    return Selection(kept, scores, merged=dpc_knn_merge(recycled, c).to(hidden.dtype))
