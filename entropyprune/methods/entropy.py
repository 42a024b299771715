"""EntropyPrune's selection rule: keep the visual tokens with the highest matrix entropy (Sec. 3.4)."""

from __future__ import annotations

import torch
from torch import Tensor

from entropyprune.methods import PruneInputs, register, top_n
from entropyprune.score import token_entropy


@register("entropy")
def entropy(inputs: PruneInputs, n_keep: int) -> tuple[Tensor, Tensor]:
    states = inputs.states
    scores = token_entropy(
        states, inputs.num_heads, variant=inputs.config.variant, head_dim=states.shape[-1]
    )
    # Rank in the dtype the score was computed in (float64 for "official", as the release does),
    # so no ties appear that rounding to float32 would create.
    return top_n(scores, n_keep), scores.to(torch.float32)
