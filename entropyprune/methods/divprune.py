"""DivPrune (vbdi/divprune, CVPR'25): the most diverse subset of each image's projected tokens.

The patches are points under the cosine distance ``D = 1 - cos`` of their features after LLaVA's
projector, and the kept set is a greedy max-min (farthest-point) selection:

- first pick: the token whose nearest neighbour is farthest. The official score of token j is the second
  smallest value of column j of D, ``topk(D, 2, dim=0, largest=False).values[1]`` (the smallest is
  normally j's distance to itself, about 0, so this is j's nearest-neighbour distance);
- every later pick: the token whose smallest distance to the tokens picked so far is largest (the
  official ``min`` over the picked rows of D, column by column);
- each pick is ``argmax``: the first of equal values, so ties go to the lower index.

As the official code computes it (``LLaVA/llava/model/llava_arch.py`` at 799e2d9: ``pairwise_cosine_similarity``
and ``DivPrune``, called at the end of ``prepare_inputs_labels_for_multimodal``):

- the features are the projected image features as spliced into the input embeddings, in the model's
  dtype; they are L2-normalised, multiplied and subtracted from 1 in that dtype (fp16 for the released
  runs). Ours are the same tensors (``VisionInputs.projected``, in the projector's dtype), same operations.
- the count is ``int(round(SUBSET_RATIO * V))``, with SUBSET_RATIO = 0.098 in its scripts: 56 of 576.
  Here the count is the budget, and ``--prune-ratio 0.098`` gives the same 56. Our ratio rounds an exact
  half up where Python's ``round`` goes to the even neighbour, so the two differ only when ``r * V``
  ends in exactly .5. DivPrune has no other parameter, so it has no options.
- order: the caller sorts the kept positions (``keep_indexs.sort()``) before gathering the embeddings,
  so the language model sees the kept tokens in their original order. ``DivPrune`` itself returns
  them in pick order. Ours are ascending too, so the language model's input is the official one.

Deviations:

- the official loop never excludes a token it has picked: a picked token's score is then its distance to
  itself (about 0; in fp16 up to about 1e-3), so it can be picked a second time once every remaining
  token is that close to the picked set (near-duplicate patches with a budget close to V). Here picked
  tokens are excluded, so the N kept tokens are distinct; in every other case the picks are the same.
- the official code prunes one image: the first prompt's, at a fixed offset of 35 tokens (LLaVA-1.5's
  system prompt), and drops the same positions from every row of the batch (its evaluation runs batch 1,
  one image per prompt). Here every image of the batch is pruned on its own, wherever the splice puts it.

The N picks run for all images of the group at once on the device. The smallest distance to the picked
set is kept as a running minimum, updated with one row of D per pick; the minimum is exact, so this
equals the official minimum over all picked rows. The traced score of a kept token is the value it was
picked with (the nearest-neighbour distance for the first pick); for every other token it is its final
distance to the kept set.

LLaVA-1.6 (the official code's "for LLaVA 1.6" branch): the selection runs on the image's merged sequence
(unpad and image_newline applied, newlines prunable), ``int(round(SUBSET_RATIO * V))`` of its own V; the
model gives it those tokens as ``projected`` (``llava/model/llava_arch.py`` ``_vision_stage_anyres``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from entropyprune.methods import Selection, Stage, register
from entropyprune.vision_inputs import VisionInputs


def cosine_distance(features: Tensor) -> Tensor:
    """``[I, V, V]``: ``1 - cos`` between every pair of tokens ``[I, V, D]``, in the features' dtype (the
    official ``1.0 - pairwise_cosine_similarity``: L2-normalise each token, then one matrix product)."""
    unit = features / features.norm(dim=-1, keepdim=True)
    return 1.0 - unit @ unit.transpose(1, 2)


def max_min_picks(distance: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor]:
    """Greedy max-min selection of ``n`` tokens per image from the distances ``[I, V, V]``.

    Returns the picks ``[I, n]`` in pick order, the score each was picked with ``[I, n]``, and every token's
    smallest distance to the picked set ``[I, V]``. Row ``p`` of D holds token p's distances, so a token's
    score (column j) reads ``D[p, j]`` over the picked p, as the official ``index_select(D, 0, picks).min(0)``.
    """
    images, tokens, _ = distance.shape
    batch = torch.arange(images, device=distance.device)
    # First pick: the second smallest value of each column (its own ~0 distance is the smallest).
    score = distance.topk(min(2, tokens), dim=1, largest=False).values[:, -1]
    nearest = torch.full_like(score, float("inf"))
    taken = torch.zeros(images, tokens, dtype=torch.bool, device=distance.device)
    picks = torch.empty(n, images, dtype=torch.long, device=distance.device)
    values = score.new_empty(n, images)
    for t in range(n):
        if t:
            score = nearest.masked_fill(taken, float("-inf"))
        j = score.argmax(dim=-1)
        picks[t] = j
        values[t] = score[batch, j]
        taken[batch, j] = True
        nearest = torch.minimum(nearest, distance[batch, j])
    return picks.t(), values.t(), nearest


def schedule(config, options, num_layers: int, num_visual: int) -> list[Stage]:
    """One stage at layer 0 keeping the budget; a ratio keeps the official ``int(round(ratio * V))`` (Python's
    round of the float product, an exact half to the even count). For V = 576 that is our usual round half up
    for every three-decimal ratio (tested); on LLaVA-1.6, whose V is each image's own, a half can occur."""
    if config.ratio is not None:
        n = int(round(float(config.ratio) * num_visual))
        if 1 <= n <= num_visual:
            return [Stage(0, n)]
    return [Stage(0, config.resolve(num_layers, num_visual))]


@register("divprune", stage="vision", schedule=schedule, anyres=lambda options, merge: "merged")
def divprune(inputs: VisionInputs, n_keep: int) -> Selection:
    picks, values, nearest = max_min_picks(cosine_distance(inputs.projected), n_keep)
    scores = nearest.scatter(1, picks, values).float()
    return Selection(kept=picks.sort(dim=-1).values, scores=scores)
