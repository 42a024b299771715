"""FastV (Chen et al., ECCV 2024; pkunlp-icler/FastV): keep the image tokens the last token attends to most.

The official rule, at layer K (default 2): take layer K-1's attention probabilities, average them over
the heads, read the row of the last prompt token (softmax over every token it sees: system, image and
text), and keep the top-N image tokens; kept tokens keep their original position ids, and the pruned set
is fixed for the whole generation (FastV's KV-cache mode). The official code reads eager attention
maps; here the one row is recomputed from layer K-1's captured query/key states, so SDPA and flash-attn
keep working and no T x T matrix is built. See docs/Methods.md for the budget conventions.
"""

from __future__ import annotations

from torch import Tensor

from entropyprune.methods import PruneInputs, register, top_n


@register("fastv")
def fastv(inputs: PruneInputs, n_keep: int) -> tuple[Tensor, Tensor]:
    attn = inputs.attention("last", source="previous")  # [I, 1, h, v]
    scores = attn[:, 0].mean(dim=1)  # mean over heads -> [I, v]
    return top_n(scores, n_keep), scores
