"""CDPruner (Theia-4869/CDPruner): the instruction-conditioned DPP of each image's projected tokens.

The kernel is ``diag(r) S diag(r)``: ``S`` the cosine similarity of the patches after LLaVA's projector,
``r`` each patch's relevance to the instruction, from CLIP's image-text similarity. The kept set is the
greedy MAP of that DPP (Fast-MAP: each pick is the patch with the largest remaining conditional variance,
updated by one Cholesky row per pick), so it is relevant and diverse at once.

As the official ``encode_images`` computes them:
- ``S``: the projected features are L2-normalised in the model's dtype, then cast to float32.
- relevance: the patch features ``hidden_states[select_layer][:, 1:]`` go through CLIP's ``post_layernorm``
  and ``visual_projection`` (float32); the instruction through CLIP's text tower (float32, one embedding
  per 77-token segment). Both are L2-normalised, and ``r = mean over segments of -(image . text)``, then
  min-max normalised as ``(r - min + 1e-6) / (max - min)``. The minus sign is the official code's: the
  patches *least* similar to the instruction in CLIP's space get the largest weight (users asked why in
  its issue #19). We keep it, since faithful means the same kept tokens; do not read ``r`` as "relevant".
- Fast-MAP for N steps: ``argmax`` (the first of equal values: ties go to the lower index), then the kept
  indices sorted.

One deviation: the official min and max run over the whole batch tensor, which couples the images of a
batch; here they run per image, so each image keeps what it keeps alone. The official driver runs batch 1
with one image per prompt, where the two agree.

The greedy loop runs N steps over every image of the group at once, on the device, without reading a value
back to the host.

LLaVA-1.6 (the official multi-view branch of ``prepare_inputs_labels_for_multimodal``): every view is a row
of one call, pruned to the budget on its own (the budget is per view); ``VisionInputs.view_image`` makes the
relevance's min and max run over each image's views, as the official ones run over its batch of views. The
official merge drops unpad and image_newline, which the model does only with ``strip_unpad=true``
(``llava/model/llava_arch.py`` ``_vision_stage_anyres`` lays the kept tokens out).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from entropyprune.methods import Selection, per_view_layout, register
from entropyprune.vision_inputs import VisionInputs


@dataclass(frozen=True)
class CDPrunerOptions:
    # The full CLIP checkpoint (folder or hub id) holding the text tower; "" = the model's vision tower's
    # own checkpoint (openai/clip-vit-large-patch14-336 for LLaVA-1.5), as the official code loads it.
    clip_text_tower: str = ""
    # LLaVA-1.6 only: the official code prunes every view with the budget per view and drops unpad and
    # image_newline from the merge. false (ours): refused on a spatial_unpad checkpoint; true: run it that way.
    strip_unpad: bool = False


def instruction_relevance(image_embeds: Tensor, text_embeds: list[Tensor], view_image: Tensor | None = None) -> Tensor:
    """``[I, V]`` the official relevance: ``-(image . text)`` of the normalised CLIP embeddings, averaged
    over each image's own text segments, min-max normalised per image (with the official ``+ 1e-6``).

    ``view_image`` ``[I]`` (LLaVA-1.6, each row a view): the image each view belongs to; the min and max then
    run over all the views of an image, as the official code's do over its batch of views."""
    image = image_embeds.float()
    image = image / image.norm(dim=-1, keepdim=True)
    text = torch.cat(text_embeds).float()
    text = text / text.norm(dim=-1, keepdim=True)
    # Image i averages over its own segments only: a block-diagonal [I, total segments] of 1/S_i, built on
    # the device (a host tensor of the counts would need a synchronising copy).
    owner = torch.block_diag(*[torch.full((1, t.shape[0]), 1.0 / t.shape[0], device=image.device)
                               for t in text_embeds])
    relevance = -torch.einsum("ivp,sp,is->iv", image, text, owner)
    low = relevance.amin(dim=-1, keepdim=True)
    high = relevance.amax(dim=-1, keepdim=True)
    if view_image is not None:  # over every view of the image: reduce the per-view extremes by image
        images = relevance.new_full((relevance.shape[0],), float("inf"))
        low = images.scatter_reduce(0, view_image, low[:, 0], "amin")[view_image, None]
        high = (-images).scatter_reduce(0, view_image, high[:, 0], "amax")[view_image, None]
    return (relevance - low + 1e-6) / (high - low)


def greedy_map(kernel: Tensor, n: int) -> Tensor:
    """``[I, n]`` ascending: the greedy MAP of the DPP with kernel ``[I, V, V]`` (Fast-MAP, Chen et al. 2018).

    ``gain[v]`` is the conditional variance of ``v`` given the picks so far (the log-det increase is its log);
    ``rows[t]`` is row t of the Cholesky factor of the picked submatrix, against every token."""
    images, tokens, _ = kernel.shape
    batch = torch.arange(images, device=kernel.device)
    gain = torch.diagonal(kernel, dim1=1, dim2=2).clone()
    rows = kernel.new_zeros(n, images, tokens)
    picks = torch.empty(n, images, dtype=torch.long, device=kernel.device)
    for t in range(n):
        j = gain.argmax(dim=-1)
        picks[t] = j
        # New Cholesky row: (K[j, :] - sum over earlier rows of row[j] * row[:]) / sqrt(gain[j]).
        projection = torch.einsum("ti,tiv->iv", rows[:t, batch, j], rows[:t])
        row = (kernel[batch, j] - projection) / gain[batch, j].sqrt().unsqueeze(-1)
        rows[t] = row
        gain = gain - row.square()
        gain[batch, j] = -float("inf")
    return picks.t().sort(dim=-1).values


def _anyres(options: CDPrunerOptions, merge: str) -> str:
    return per_view_layout("cdpruner", merge, options.strip_unpad)


@register("cdpruner", stage="vision", options=CDPrunerOptions, needs=("clip_text",), anyres=_anyres)
def cdpruner(inputs: VisionInputs, n_keep: int) -> Selection:
    projected = inputs.projected
    unit = (projected / projected.norm(dim=-1, keepdim=True)).float()
    similarity = unit @ unit.transpose(1, 2)
    relevance = instruction_relevance(inputs.image_embeds(), inputs.text_embeds(), inputs.view_image)
    kernel = relevance.unsqueeze(2) * similarity * relevance.unsqueeze(1)
    return Selection(kept=greedy_map(kernel, n_keep), scores=relevance)
