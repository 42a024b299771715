"""Every layer's post-RoPE query/key states of one image's tokens, from the model's own forward pass."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from entropyprune.config import STATES
from entropyprune.score import matrix_entropy


@torch.inference_mode()
def layer_states(model, input_ids: torch.Tensor, images: torch.Tensor, states: Sequence[str] = STATES,
                 image_sizes=None):
    """One prefill (no pruning, no generation) of a single prompt with one image.

    Returns ``({state: [L tensors [V, h * d_h]]}, (start, V))``: every layer's post-RoPE states of the
    image tokens, and where the image sits in the spliced sequence. The states come from
    ``LlamaModel.forward``'s ``observe_states``: the very tensors attention used, so nothing re-applies RoPE.
    ``image_sizes``: the image's (width, height), which LLaVA-1.6 (anyres) needs for its crop grid; V is then
    the image's own count, newlines included.
    """
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"layer_states takes one prompt, input_ids [1, T]; got shape {list(input_ids.shape)}")
    bad = [s for s in states if s not in STATES]
    if bad:
        raise ValueError(f"states must be among {', '.join(STATES)}, got {bad}")
    splice = model.splice_multimodal(input_ids, images, image_sizes=image_sizes)
    spans = splice.image_spans[0]
    if len(spans) != 1:
        raise ValueError(f"the prompt must hold exactly one <image>; it holds {len(spans)}")
    start, length = spans[0]
    out: dict[str, list[torch.Tensor]] = {s: [] for s in states}

    def keep(_layer: int, query: torch.Tensor, key: torch.Tensor) -> None:
        for name, x in (("query", query), ("key", key)):
            if name in out:
                # [1, h, T, d_h] -> the span's tokens as [V, h * d_h]
                span = x[0, :, start:start + length]
                out[name].append(span.transpose(0, 1).reshape(length, -1))

    # The language model alone: no LM head, no cache, no prune hook whatever the model's settings.
    model.get_model()(splice.inputs_embeds, splice.position_ids, None, None, None, observe_states=keep)
    return out, spans[0]


def entropy_profile(states: list[torch.Tensor], alpha: float = 1.0) -> list[float]:
    """``curve[i]`` = matrix entropy of layer i's token matrix (Eq. 1-4; order ``alpha``)."""
    values = torch.stack([matrix_entropy(x, alpha) for x in states])
    return values.cpu().tolist()
