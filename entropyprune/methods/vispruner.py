"""VisPruner (Theia-4869/VisPruner, ICCV'25): important tokens by the vision tower's [CLS] attention, then
diverse tokens from the rest by removing near-duplicates.

Of a budget of T tokens, ``T_imp = int(T * important_ratio)`` are *important* and ``T_div = T - T_imp``
*diverse*. As the official code computes them (``llava/model/llava_arch.py`` at aefa01a, ``encode_images``;
``llava/model/multimodal_encoder/clip_encoder.py``, ``feature_select``):

- importance: the attention of the [CLS] query to each patch in the tower's ``attentions[select_layer]``
  (the same index LLaVA uses for ``hidden_states``; for LLaVA's -2 that is encoder layer L-2, the layer
  whose output is the features), softmax over CLS and every patch with the CLS column then dropped,
  averaged over the heads. The patches are ordered by it, highest first: the first T_imp are important,
  the rest, in that order, are the residual.
- diversity: while the residual holds more than T_div tokens, ``r = min(8, R - T_div)``. The residual (in
  its current order) is split into its even positions ``a`` and odd positions ``b``. Each ``a`` is scored
  by its largest cosine similarity to any ``b``, using the patch features LLaVA feeds its projector
  (``hidden_states[select_layer][:, 1:]``), L2-normalised, in the model's dtype. The r ``a`` tokens with the
  highest scores go. The new residual is the remaining ``a`` tokens in descending score order, then every
  ``b`` in its order, so the next round splits a different pairing.
- the kept set, important plus residual, reaches the language model in ascending position order (the
  official boolean index mask).
- ``important_ratio`` defaults to 0.5, the eval drivers' default; the README's examples use 0.5 and 0.75
  (``mme.sh 64 0.75``: 48 important + 16 diverse).

Deviations:

- precision: the official attention is transformers' eager CLIP attention in the model's dtype (fp16
  probabilities, averaged in fp16). Ours is :meth:`VisionInputs.cls_attention`, recomputed for the CLS
  row from that layer's q/k in float32; it equals transformers' ``output_attentions`` weights (tested).
  The similarities are in the features' dtype, as the official ones. Each round's order of the kept ``a``
  tokens sets the next round's pairs, so the diverse picks are sensitive to near-equal similarities: another
  precision or kernel can change some of them (the end-to-end test runs the tiny model in float64 for this).
- ties: the official ``argsort`` is not stable, so equal values (likely among fp16 scores) come out in an
  order the kernel chooses. Here every sort is stable: equal values keep their index (for the attention)
  or residual position (for the similarities) order.
- an odd residual: when ``V - T_imp`` is odd, the official indexing of the kept ``a`` tokens uses a grid of
  ``R // 2 - r`` columns where ``a`` leaves ``R // 2 + 1 - r``: it raises a shape mismatch, except when
  ``R // 2 - r`` is 1 (then it is right) or 0 (then it silently drops the last ``a`` too). Here the same
  rule runs on any R, with ``a`` one token longer than ``b``. With V = 576 the README's examples (128 at 0.5,
  64 at 0.75) and the usual 192/128/64 at 0.5 have an even T_imp, so an even residual.

The images of a group are processed together, as the official batched code does (every image on its own).
The rounds are a Python loop over at most ``(V - T) / 8 + 1`` steps whose sizes are known in advance;
nothing is read back from the device. The traced score of a patch is its head-averaged CLS attention.

LLaVA-1.6: as the official multi-view branch, every view is pruned on its own with the budget per view, and
the kept tokens are laid out without unpad or image_newline, only with ``strip_unpad=true`` on a
spatial_unpad checkpoint (``llava/model/llava_arch.py`` ``_vision_stage_anyres``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from entropyprune.methods import Selection, per_view_layout, register
from entropyprune.vision_inputs import VisionInputs


@dataclass(frozen=True)
class VisPrunerOptions:
    # Fraction of the budget taken by [CLS] attention: int(T * important_ratio) tokens; the rest are diverse.
    important_ratio: float = 0.5
    # LLaVA-1.6 only: the official code prunes every view with the budget per view and drops unpad and
    # image_newline from the merge. false (ours): refused on a spatial_unpad checkpoint; true: run it that way.
    strip_unpad: bool = False

    def check(self) -> None:
        if not 0.0 <= self.important_ratio <= 1.0:
            raise ValueError(f"important_ratio must be in [0, 1], got {self.important_ratio}")


def split_budget(n_keep: int, important_ratio: float) -> tuple[int, int]:
    """``(T_imp, T_div)``: the official ``int(T * r)`` (Python float product, truncated) and the rest."""
    important = int(n_keep * important_ratio)
    return important, n_keep - important


def remove_duplicates(unit: Tensor, residual: Tensor, n_diverse: int) -> Tensor:
    """``[I, n_diverse]``: the official rounds of duplicate removal on the residual ``[I, R]`` (token indices in
    their current order), with ``unit`` ``[I, V, C]`` the L2-normalised features."""
    if n_diverse <= 0:
        return residual[:, :0]
    channels = unit.shape[-1]
    while True:
        width = residual.shape[1]
        drop = min(8, width - n_diverse)
        if drop <= 0:
            return residual
        tokens = unit.gather(1, residual[..., None].expand(-1, -1, channels))
        a, b = tokens[:, ::2], tokens[:, 1::2]
        best = (a @ b.transpose(1, 2)).amax(dim=-1)  # each even-position token's closest odd-position match
        stay = torch.sort(best, dim=-1, descending=True, stable=True).indices[:, drop:]
        residual = torch.cat([residual[:, ::2].gather(1, stay), residual[:, 1::2]], dim=1)


def vispruner_select(importance: Tensor, features: Tensor, n_keep: int, important_ratio: float) -> Tensor:
    """``[I, n_keep]`` ascending: VisPruner's kept patches from the head-averaged CLS attention ``[I, V]`` and
    the patch features ``[I, V, C]``."""
    n_important, n_diverse = split_budget(n_keep, important_ratio)
    order = torch.sort(importance, dim=-1, descending=True, stable=True).indices
    unit = features / features.norm(dim=-1, keepdim=True)
    diverse = remove_duplicates(unit, order[:, n_important:], n_diverse)
    return torch.cat([order[:, :n_important], diverse], dim=1).sort(dim=-1).values


def _anyres(options: VisPrunerOptions, merge: str) -> str:
    return per_view_layout("vispruner", merge, options.strip_unpad)


@register("vispruner", stage="vision", options=VisPrunerOptions, anyres=_anyres)
def vispruner(inputs: VisionInputs, n_keep: int) -> Selection:
    importance = inputs.cls_attention(inputs.select_attention_layer()).mean(dim=1)
    options = inputs.options if inputs.options is not None else VisPrunerOptions()
    kept = vispruner_select(importance, inputs.features, n_keep, options.important_ratio)
    return Selection(kept=kept, scores=importance)
