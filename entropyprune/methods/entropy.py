"""EntropyPrune's selection rule: keep the visual tokens with the highest matrix entropy (Sec. 3.4)."""

from __future__ import annotations

import torch
from torch import Tensor

from entropyprune.methods import PruneInputs, register, top_n
from entropyprune.score import token_entropy


@register("entropy")
def entropy(inputs: PruneInputs, n_keep: int) -> tuple[Tensor, Tensor]:
    config = inputs.config
    heads = inputs.num_heads

    def score(states: Tensor) -> Tensor:  # [N, h, d_h] -> [N]
        return token_entropy(states, heads, variant=config.variant, head_dim=states.shape[-1])

    # One call for the image tokens of every group of the stage: one eigen-solve however many image sizes.
    scores = inputs.token_scores(("entropy", config.variant), score)
    # Rank in the dtype the score was computed in (float64 for "official", as the release does),
    # so no ties appear that rounding to float32 would create.
    return top_n(scores, n_keep), scores.to(torch.float32)
