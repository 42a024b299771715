"""Random baseline: keep a uniformly random subset of the visual tokens.

Each image's draw depends only on ``config.seed`` and its token count: it is made on the CPU with a
generator seeded per image, so the same seed keeps the same positions on every device, in every run (a
resumed benchmark does not change its selection) and whatever else is in the batch. Every image of the
same size therefore gets the same pattern; use several seeds to average over patterns. (The released
code's random baseline was unseeded.)

It runs inside the language model (``--prune-layer K``, K >= 1) or, with ``--prune-layer 0``, at the vision
stage: the same draw then picks which patches reach the language model at all.
"""

from __future__ import annotations

import torch
from torch import Tensor

from entropyprune.methods import PruneInputs, register, top_n
from entropyprune.vision_inputs import VisionInputs


def draw(seed: int, images: int, tokens: int) -> Tensor:
    """``[images, tokens]`` scores: the same row for every image, as a batch of one would draw it."""
    row = torch.rand(1, tokens, generator=torch.Generator(device="cpu").manual_seed(seed), dtype=torch.float32)
    return row.expand(images, tokens).contiguous()


@register("random", stage=("llm", "vision"))
def random_selection(inputs: PruneInputs | VisionInputs, n_keep: int) -> tuple[Tensor, Tensor]:
    if isinstance(inputs, VisionInputs):  # --prune-layer 0: before the language model
        images, tokens, device = inputs.num_images, inputs.num_tokens, inputs.device
    elif inputs.slots is not None:
        (images, tokens), device = inputs.slots.shape, inputs.slots.device
    else:
        (images, tokens), device = inputs.states.shape[:2], inputs.states.device
    scores = draw(inputs.config.seed, images, tokens)
    if device.type == "cuda":
        # Pinned + non_blocking: a pageable host-to-device copy would make the host wait for the GPU.
        scores = scores.pin_memory().to(device, non_blocking=True)
    else:
        scores = scores.to(device)
    return top_n(scores, n_keep), scores
