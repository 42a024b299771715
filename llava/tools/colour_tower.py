"""A tiny CLIP vision tower whose weights are set by hand: each patch feature is the patch's colour and place.

The synthetic task (llava/tools/make_synthetic_data.py) draws coloured shapes on a grey background. A tiny
CLIP with random weights mixes a patch's pixels into features from which a small language model trained for
a few minutes on a CPU cannot read the colour back; the real LLaVA has a CLIP trained on 400M images instead.
This tower stands in for that pretrained CLIP: a real ``CLIPVisionModel`` (same config, same key names, same
preprocessing, so the runtime, the pruning methods and transformers load it as any tower), with

- the patch embedding (a 14x14 convolution) computing, for each quadrant (7x7 pixels) of a patch, the colour
  contrasts R-G and G-B (zero on grey, large on a coloured shape; times ``CHROMA_GAIN``) and the brightness;
- the position embedding adding the patch's row and column as sinusoids, and the constants that undo CLIP's
  mean/std normalisation of the pixels (a convolution without bias cannot add them);
- every encoder layer an identity (its attention output and MLP output projections are zero), so the
  selected layer's features are ``pre_layrnorm`` of the embeddings. The layers' query and key projections
  stay random: CLS-attention methods (VisionZip, VisPruner, PruMerge) then rank patches by a random but
  content-dependent attention, which is what this tower can offer them.

Feature layout (hidden size 32): [0:4] R-G per quadrant, [4:8] G-B, [8:12] brightness - 0.5, [12:28] position
(sin/cos of row and column at 4 frequencies, times 0.5), [28:32] zero; then LayerNorm over the 32.
"""

from __future__ import annotations

import math

import torch

CHROMA_GAIN = 4.0
POSITION_SCALE = 0.5
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def position_features(side: int) -> torch.Tensor:
    """``[side*side, 16]`` the patches' row/column sinusoids, row-major as CLIP orders its patches."""
    r = torch.arange(side).repeat_interleave(side).double()
    c = torch.arange(side).repeat(side).double()
    out = []
    for f in range(4):
        freq = math.pi / side * 2 ** f
        out += [torch.sin(freq * r), torch.cos(freq * r), torch.sin(freq * c), torch.cos(freq * c)]
    return torch.stack(out, 1) * POSITION_SCALE


@torch.no_grad()
def set_colour_weights(tower) -> None:
    """Overwrite a ``CLIPVisionModel``'s weights in place (hidden size 32, patch size even) as described above."""
    cfg = tower.config
    hidden, patch, side = cfg.hidden_size, cfg.patch_size, cfg.image_size // cfg.patch_size
    if hidden != 32 or patch % 2:
        raise ValueError(f"the colour tower needs hidden_size 32 and an even patch size; got {hidden}, {patch}")
    body = getattr(tower, "vision_model", tower)  # transformers 4 has the level, 5 does not
    emb = body.embeddings
    half = patch // 2
    area = half * half
    conv = torch.zeros(hidden, 3, patch, patch, dtype=torch.float64)
    const = torch.zeros(hidden, dtype=torch.float64)
    for q in range(4):  # quadrants: top-left, top-right, bottom-left, bottom-right
        rows = slice((q // 2) * half, (q // 2 + 1) * half)
        cols = slice((q % 2) * half, (q % 2 + 1) * half)
        # a pixel's value in [0, 1] is x * std + mean of its CLIP-normalised x: the std goes into the
        # convolution, the mean into the constant added through the position embedding
        for dim, signs in ((q, (1, -1, 0)), (4 + q, (0, 1, -1))):
            for ch, s in enumerate(signs):
                conv[dim, ch, rows, cols] = CHROMA_GAIN * s * CLIP_STD[ch] / area
                const[dim] += CHROMA_GAIN * s * CLIP_MEAN[ch]
        for ch in range(3):
            conv[8 + q, ch, rows, cols] = CLIP_STD[ch] / (3 * area)
            const[8 + q] += CLIP_MEAN[ch] / 3
        const[8 + q] -= 0.5
    pos = torch.zeros(side * side + 1, hidden, dtype=torch.float64)
    pos[1:, :28] = const[:28]
    pos[1:, 12:28] = position_features(side)
    emb.patch_embedding.weight.copy_(conv)
    emb.position_embedding.weight.copy_(pos)
    emb.class_embedding.zero_()
    pre = body.pre_layrnorm
    pre.weight.fill_(1.0)
    pre.bias.zero_()
    for layer in body.encoder.layers:
        for lin in (layer.self_attn.out_proj, layer.mlp.fc2):
            lin.weight.zero_()
            lin.bias.zero_()
