"""PruMerge and PruMerge+ (42Shawn/LLaVA-PruMerge): keep the patches the CLS token attends to unusually
strongly, and let each kept patch absorb its nearest neighbours.

Read from ``llava/model/multimodal_encoder/clip_encoder.py`` at 097c041 (``token_prune_merge_advanced``,
``token_prune_merge_advanced_plus``, ``outlier_dectection``, ``complement_idx``; ``forward`` calls the plus
variant with ``if_adaptive=True``):

- *CLS attention*: forward hooks on ``encoder.layers[23].self_attn.q_proj``/``k_proj`` capture that layer's
  q and k, full width (1024, all heads together, before CLIP's scaling); ``softmax(q k^T * C**-0.5)`` over
  all 577 keys, ``C`` the feature width; the CLS row without its own column. One head over the whole width,
  not a mean of per-head attentions. Layer 23 is the layer whose input is LLaVA's features
  (``hidden_states[-2]``): here it is the tower's select layer read as a layer index
  (:meth:`VisionInputs.cls_attention_full`); the tiny tower's is layer 2.
- *Adaptive count* (``outlier_dectection``): the CLS attention values, ``Q1``/``Q3`` by ``np.percentile``
  (linear interpolation), outliers are values strictly above ``Q3 + 1.5 * (Q3 - Q1)``; ``ratio = outliers /
  values`` and ``int(V * ratio)`` patches are kept by ``torch.topk`` of the attention: the outliers. There
  is no fallback count: ``reduction_ratio=1/8`` is used only with ``if_adaptive=False``.
- *Merge*: keys are layer 23's ``k_proj`` output of the patches, full width, L2-normalised. Each kept patch
  ``j`` takes the 32 patches ``v != j`` (kept or not) of largest cosine ``k_j . k_v`` and becomes
  ``x_j + sum_v a_v x_v``: its own feature with weight 1 plus its neighbours' features (LLaVA's features,
  ``hidden_states[-2]`` without CLS) weighted by their CLS attention ``a_v``, not normalised (the division
  by the weights' sum is commented out), neighbours taken with their original features.
- *Extra token*: ``sum_v a_v x_v`` over every pruned patch, placed after the kept ones. The tower returns the
  kept tokens and this one; LLaVA's projector then maps them to the language model's space.
- *PruMerge+* adds spatially uniform patches: ``step = int(1 / ratio)``, the positions
  ``arange(0, 575, int(step / 3))`` that are not outliers, after them (about three uniform patches per
  outlier). The same merge and extra token follow.

Here: ``prumerge`` (``token_prune_merge_advanced``) and ``prumerge_plus`` (``..._plus``), both adaptive by
default (option ``adaptive=true``, the official setting). The official ``int`` arithmetic is reproduced in
float64 on the device (``int(V * ratio)``, ``int(1 / ratio)``, ``int(step / 3)``); the quartiles are
``torch.quantile``'s linear rule (numpy's default) in float64 on the float32 attention. For V = 576,
``int(V * ratio)`` is the outlier count and ``int(1 / ratio)`` is ``576 // count`` (checked for every count).

``adaptive=false`` takes the budget N (``--prune-keep``/``--prune-avg-tokens``/``--prune-ratio``) instead of
the outlier count, so the methods fit a fixed-budget table: N - 1 kept patches and the extra token
(schedule ``Stage(0, N - 1, 1)``). ``prumerge`` keeps the top N - 1 by CLS attention. ``prumerge_plus``
follows the official fixed-ratio branch (``if_adaptive=False``, "for training"), which takes as many
uniform patches as attention ones (``int(V / 8)`` each, the uniform ones at ``arange(step // 2, 575,
step)``): of the N - 1, ``u = (N - 1) // 2`` are uniform at ``(2j + 1) * V // (2u)`` (the official positions
when ``u`` divides V, e.g. 4, 12, ..., 572 for ``u = 72``) and the other ``N - 1 - u`` are the top patches by
CLS attention among the rest. The official branch does not remove an attention pick that is also a uniform
position (it would hold that patch twice); picking the attention patches among the non-uniform ones keeps
exactly N distinct tokens.

Deviations, all for batching or for the registry's contract:
- Per image. ``outlier_dectection`` pools the quartiles over the whole batch (and the plus variant's
  filtering breaks for a batch above one); each image here gets its own count. The official driver runs
  batch 1, where they agree.
- Order. The official kept tokens go to the language model in ``topk`` order (descending attention), the
  uniform ones after them; here they are in patch order (``kept`` ascending, ``embeds`` aligned to it), the
  extra token last in both. The merged values do not depend on the order.
- Ties in the attention ranking go to the lower index (a stable sort; ``topk`` promises none). In the
  adaptive mode the outliers are a threshold set, so ties cannot change it.
- Precision: the attention, similarities and merge are float32 (the official code runs them in the
  tower's dtype, float16 in its scripts); the merged features are cast back to the features' dtype before
  the projector, as the official tower returns them.
- PruMerge+ with no outlier (all attention values within the fence) divides by zero in the official code;
  here the step is infinite, so the uniform positions are ``[0]``, the limit of the official rule.

Adaptive mode returns one ``Selection`` per image (1-D ``kept``/``scores``/``embeds``, ``merged`` ``[1, D]``):
building them needs each image's count on the host, one device-to-host copy per call (the only one; the
selection itself is batched over the images on the device). The fixed mode returns one batched Selection
without reading anything back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from entropyprune.methods import Selection, Stage, register, top_n
from entropyprune.vision_inputs import VisionInputs

NEIGHBOURS = 32  # the official ``topk(..., k=32)`` of the merge


@dataclass(frozen=True)
class PruMergeOptions:
    # True: the official adaptive count (IQR outliers of the CLS attention), no budget. False: the budget N
    # (N - 1 kept + 1 merged), so the method runs at a fixed token count (see the module docstring).
    adaptive: bool = True


def attention_layer(inputs: VisionInputs) -> int:
    """The encoder layer whose q/k give the CLS attention and the keys: the one LLaVA's features enter
    (official: layer 23 of 24 for ``mm_vision_select_layer=-2``)."""
    layer = inputs.select_layer
    if not 0 <= layer < inputs.num_layers:
        raise ValueError(f"PruMerge reads the attention of the encoder layer after the features (hidden state "
                         f"{layer}), but the tower has only {inputs.num_layers} layers")
    return layer


def outlier_counts(attn: Tensor) -> Tensor:
    """``[I]`` how many of each image's values ``[I, V]`` lie strictly above ``Q3 + 1.5 * IQR`` (quartiles by
    linear interpolation, numpy's ``percentile`` default; float64)."""
    values = attn.double()
    quartiles = torch.tensor([0.25, 0.75], dtype=torch.float64, device=values.device)
    q1, q3 = torch.quantile(values, quartiles, dim=-1, keepdim=True)
    return (values > q3 + 1.5 * (q3 - q1)).sum(-1)


def adaptive_plan(attn: Tensor) -> tuple[Tensor, Tensor]:
    """``(keep, stride)``, each ``[I]`` int64: how many top-attention patches an image keeps
    (``int(V * ratio)``) and PruMerge+'s uniform stride (``int(int(1 / ratio) / 3)``, V where there is no
    outlier), with the official Python float arithmetic done in float64 on the device."""
    tokens = attn.shape[-1]
    ratio = outlier_counts(attn).double() / tokens
    keep = torch.floor(tokens * ratio).long()
    step = torch.floor(1.0 / ratio)  # inf where ratio == 0
    stride = torch.floor(step / 3)
    stride = torch.where(ratio > 0, stride, torch.full_like(stride, tokens)).long()
    return keep, stride


def top_mask(attn: Tensor, keep: Tensor) -> Tensor:
    """``[I, V]`` bool: each image's ``keep[i]`` patches of highest attention (ties to the lower index)."""
    order = torch.sort(attn, dim=-1, descending=True, stable=True).indices
    ranks = torch.arange(attn.shape[-1], device=attn.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(-1, order, ranks)
    return rank < keep.unsqueeze(-1)


def uniform_mask(tokens: int, stride: Tensor) -> Tensor:
    """``[I, V]`` bool: PruMerge+'s ``arange(0, V - 1, stride[i])`` (the official ``arange(0, 575, ...)``)."""
    pos = torch.arange(tokens, device=stride.device)
    return (pos < tokens - 1) & (pos % stride.unsqueeze(-1) == 0)


def spread(tokens: int, count: int, device=None) -> Tensor:
    """``[count]`` evenly spaced positions ``(2j + 1) * V // (2 * count)``: the official fixed-ratio
    ``arange(step // 2, V - 1, step)`` when ``count`` divides V."""
    j = torch.arange(count, device=device)
    return (2 * j + 1) * tokens // (2 * count)


def merge(features: Tensor, keys: Tensor, attn: Tensor, kept: Tensor,
          neighbours: int = NEIGHBOURS) -> Tensor:
    """``[I, n, Dv]`` float32: each kept patch plus its ``neighbours`` nearest other patches by key cosine
    similarity, weighted by their CLS attention (its own weight 1): ``x_j + sum_v a_v x_v``.

    ``features`` ``[I, V, Dv]``, ``keys`` ``[I, V, Dk]``, ``attn`` ``[I, V]``, ``kept`` ``[I, n]``."""
    images, tokens, _ = features.shape
    if tokens - 1 < neighbours:
        raise ValueError(f"PruMerge merges {neighbours} neighbours per kept patch; an image of {tokens} patches "
                         "has too few")
    x = features.float()
    unit = F.normalize(keys.float(), p=2, dim=-1)
    n = kept.shape[1]
    centre = unit.gather(1, kept.unsqueeze(-1).expand(-1, -1, unit.shape[-1]))
    similarity = centre @ unit.transpose(1, 2)  # [I, n, V]
    similarity.scatter_(-1, kept.unsqueeze(-1), float("-inf"))  # a patch is not its own neighbour
    nearest = similarity.topk(neighbours, dim=-1).indices  # [I, n, k]
    weights = attn.float().unsqueeze(1).expand(images, n, tokens).gather(-1, nearest)
    spread_weights = x.new_zeros(images, n, tokens).scatter_(-1, nearest, weights)
    own = x.gather(1, kept.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    return own + spread_weights @ x


def pruned_sum(features: Tensor, attn: Tensor, kept_mask: Tensor) -> Tensor:
    """``[I, 1, Dv]`` float32: the official extra token, ``sum_v a_v x_v`` over the patches not kept."""
    weights = torch.where(kept_mask, 0.0, attn.float())
    return (weights.unsqueeze(1) @ features.float())


def _keys(inputs: VisionInputs, layer: int) -> Tensor:
    """``[I, V, Dv]`` the patches' full-width keys (``k_proj`` output, every head): what the hook sees."""
    k = inputs.vision_qk(layer)[1][:, :, 1:]  # [I, h, V, d]
    return k.transpose(1, 2).reshape(k.shape[0], k.shape[2], -1)


def _prumerge(inputs: VisionInputs, n_keep: int, plus: bool):
    layer = attention_layer(inputs)
    attn = inputs.cls_attention_full(layer)  # [I, V]
    images, tokens = attn.shape
    device = attn.device
    if inputs.options.adaptive:
        keep, stride = adaptive_plan(attn)
        mask = top_mask(attn, keep)
        if plus:
            mask = mask | uniform_mask(tokens, stride)
        pos = torch.arange(tokens, device=device)
        # Kept patches first (ascending), then the others: row i's first n_i entries are its kept set.
        order = torch.where(mask, pos, pos + tokens).sort(dim=-1).indices
        counts = mask.sum(-1).tolist()  # the one device-to-host read: each image's count
        kept = order[:, :max(counts)]
    else:
        if plus:
            uniform = n_keep // 2
            grid = spread(tokens, uniform, device).expand(images, uniform)
            others = attn.scatter(-1, grid, float("-inf"))
            kept = torch.cat([grid, top_n(others, n_keep - uniform)], dim=-1).sort(dim=-1).values
        else:
            kept = top_n(attn, n_keep)
        mask = torch.zeros(images, tokens, dtype=torch.bool, device=device).scatter_(-1, kept, True)
    features = inputs.features
    merged = merge(features, _keys(inputs, layer), attn, kept)
    embeds = inputs.project(merged.to(features.dtype))
    extra = inputs.project(pruned_sum(features, attn, mask).to(features.dtype))
    if not inputs.options.adaptive:
        return Selection(kept=kept, scores=attn, embeds=embeds, merged=extra)
    return [Selection(kept=kept[i, :n], scores=attn[i], embeds=embeds[i, :n], merged=extra[i])
            for i, n in enumerate(counts)]


def _schedule(config, options: PruMergeOptions, num_layers: int, num_visual: int) -> list[Stage]:
    """Fixed-budget mode: the budget N is N - 1 kept patches and the extra token."""
    n = config.resolve(num_layers, num_visual)
    if n < 2:
        raise ValueError(f"{config.method!r} with adaptive=false keeps N - 1 patches and merges the rest into one "
                         f"token, so its budget must be at least 2; got {n}")
    return [Stage(0, n - 1, 1)]


def _adaptive(options: PruMergeOptions) -> bool:
    return options.adaptive


@register("prumerge", stage="vision", options=PruMergeOptions, adaptive=_adaptive, schedule=_schedule)
def prumerge(inputs: VisionInputs, n_keep: int):
    return _prumerge(inputs, n_keep, plus=False)


@register("prumerge_plus", stage="vision", options=PruMergeOptions, adaptive=_adaptive, schedule=_schedule)
def prumerge_plus(inputs: VisionInputs, n_keep: int):
    return _prumerge(inputs, n_keep, plus=True)
