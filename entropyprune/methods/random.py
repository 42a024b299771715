"""Random baseline: keep a uniformly random subset of the visual tokens.

The draw depends only on ``config.seed`` and the shape ``[I, V]``: it is made on the CPU, so the
same seed keeps the same positions on every device and in every run (a resumed benchmark does not
change its selection). Every prompt with the same image count therefore gets the same pattern; use
several seeds to average over patterns. (The released code's random baseline was unseeded.)
"""

from __future__ import annotations

import torch
from torch import Tensor

from entropyprune.methods import PruneInputs, register, top_n


@register("random")
def random_selection(inputs: PruneInputs, n_keep: int) -> tuple[Tensor, Tensor]:
    images, tokens = inputs.states.shape[:2]
    generator = torch.Generator(device="cpu").manual_seed(inputs.config.seed)
    scores = torch.rand(images, tokens, generator=generator, dtype=torch.float32)
    device = inputs.states.device
    if device.type == "cuda":
        # Pinned + non_blocking: a pageable host-to-device copy would make the host wait for the GPU.
        scores = scores.pin_memory().to(device, non_blocking=True)
    else:
        scores = scores.to(device)
    return top_n(scores, n_keep), scores
