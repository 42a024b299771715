"""VisionZip (Yang et al., CVPR 2025; dvlab-research/VisionZip): keep the patches the CLS token attends to
most (dominant tokens) and merge the rest into a few contextual tokens, before the language model.

The official rule (``visionzip/clip_encoder.py`` ``CLIPVisionTower_VisionZip.forward`` and
``visionzip/utils.py`` at commit 3151f6d, unchanged since the initial commit a9a3258), for LLaVA-1.5's
24-layer CLIP tower and ``visionzip(model, dominant=D, contextual=C)``:

* Everything comes from encoder layer 22 = ``layers[-2]``, the layer whose output is LLaVA's feature
  layer ``hidden_states[-2]`` (``mm_vision_select_layer=-2``): its attention weights
  ``attentions[-2]`` (the tower runs with ``output_attentions``), its keys (the patched ``CLIPAttention``
  returns the unscaled ``k_proj`` output averaged over the heads as ``metric``; the ToMe-style ``r`` list
  ``[0]*22 + [1] + [0]`` stores it on layer 22 only) and its output ``hidden_states[-2]``.
* Dominant: the CLS row of that attention, *summed* over the heads, over the patches (``1:``); the top
  ``D - 1`` patches (``topk``), plus the CLS token itself: ``D`` tokens in all. They are gathered with a
  mask, so they come out in their original order: CLS first, then the patches by ascending index.
* Contextual: the ``M = V - (D - 1)`` remaining patches in ascending order; their ``metric`` (layer 22's
  keys, mean over heads) L2-normalised; ``C`` targets at a uniform step, ``step = max(1, M // C)``,
  positions ``arange(0, M, step)[:C]`` among the remaining; every other remaining patch goes to the target
  of largest dot product (``argmax``: the first target on a tie); contextual token t = ``hidden[target t]
  + mean of hidden[assigned to t]`` (a one-hot matmul divided by the assigned count clamped to 1). Note
  that this is the target *plus* the mean of its assigned tokens, not one mean over all of them; a target
  that nobody joins is passed on unchanged.
* The LLM gets ``projector([dominant (CLS first), contextual])``: D + C tokens. The CLS token is kept
  (the tower's own ``feature_select`` with LLaVA's ``"patch"`` setting is bypassed).

Our layout. A vision-stage selection is ``kept`` (patch indices) followed by ``merged`` tokens, so the CLS
token, which is not a patch, is the first merged token: ``kept`` = the ``D - 1`` dominant patches
(ascending, as the official), ``merged`` = ``projector([CLS, contextual])``, ``[I, 1 + C, D_llm]``; the
schedule is ``Stage(0, D - 1, C + 1)``, D + C = the budget N. The only difference from the official
sequence is where CLS sits: after the dominant patches instead of before them (the splice places method-made
tokens after the kept ones); the set of tokens the language model sees is the official one.

Budgets. The official README and quick start give 64 = 54 + 10 (the repository gives no other split); the
128 = 108 + 20 and 192 = 162 + 30 used for the paper's other LLaVA-1.5 budgets keep the same proportion
(not checked against the paper's appendix here). For a budget N:
``C = round(10 N / 64)`` (halves up), ``D = N - C``; options ``dominant``/``contextual`` (official
meaning: ``dominant`` counts the CLS token) override it (0: from the budget; both given must sum to N).

Other differences, all in how the same rule is computed:
* The layer is the one that produces LLaVA's features (``select_layer - 1``; the features
  ``select_layer``), which is the official ``[-2]`` for ``mm_vision_select_layer=-2``; the official code
  hard-codes ``-2`` (and its ``r`` list hard-codes 24 layers).
* The CLS attention is recomputed for the CLS row in float32 (``VisionInputs.cls_attention``; the official
  softmax runs in the tower's dtype), and the top D - 1 are taken with a stable sort, ties to the lower
  index (``torch.topk`` promises no order among ties). The keys, the similarities and the merge run in the
  tower's dtype, as the official code does.
* ``contextual=0`` (D = N) keeps only dominant tokens (the official code divides by zero there).

One call handles every image of a group, with no host read: the remaining patches are found by a stable
sort of the kept mask, and the target positions depend only on V, D and C.

LLaVA-1.6 (``visionzip/llava_arch.py``): every view gets its D + C tokens; the image's sequence is the base
view's [CLS, dominant, contextual], the crops' dominant patches on the full crop grid (no unpad, no
newline), every crop's CLS, every crop's contextual tokens; with a flat merge, each view's rows in turn. The
model builds it (``llava/model/llava_arch.py`` ``_vision_stage_anyres``) only with ``strip_unpad=true`` on a
spatial_unpad checkpoint; the official spatial branch fails, so that merge is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from entropyprune.methods import Selection, Stage, register, top_n
from entropyprune.vision_inputs import VisionInputs


@dataclass(frozen=True)
class VisionZipOptions:
    # The official ``visionzip(model, dominant=D, contextual=C)``: D tokens kept by CLS attention (the CLS
    # token among them), C merged. 0 = from the budget (C = round(10 N / 64), D = N - C).
    dominant: int = 0
    contextual: int = 0
    # LLaVA-1.6 only: the official code keeps every view's tokens and lays the crops' dominant ones on their full
    # grid, without unpad or image_newline. false (ours): refused on a spatial_unpad checkpoint; true: run it so.
    strip_unpad: bool = False

    def check(self) -> None:
        if self.dominant < 0 or self.contextual < 0:
            raise ValueError("dominant and contextual must be >= 0 (0: from the budget)")
        if self.dominant == 1:
            raise ValueError("dominant counts the CLS token: it must be >= 2 (CLS and at least one patch), "
                             "or 0 for the budget's split")


def split(n: int, options: VisionZipOptions) -> tuple[int, int]:
    """``(dominant, contextual)`` in the official sense (``dominant`` counts CLS) for a budget of N tokens.

    Without options: ``contextual = round(10 N / 64)`` (halves up), which gives the official 54 + 10,
    108 + 20 and 162 + 30 for 64, 128 and 192; ``dominant = N - contextual``."""
    d, c = options.dominant, options.contextual
    if d and c:
        if d + c != n:
            raise ValueError(f"visionzip: --prune-option dominant={d} contextual={c} make {d + c} tokens, but the "
                             f"budget is {n}: give one of them (the other is the rest) or a budget of {d + c}")
    elif d:
        c = n - d
    elif c:
        d = n - c
    else:
        c = (10 * n + 32) // 64
        d = n - c
    if c < 0:
        raise ValueError(f"visionzip: --prune-option dominant={d} is more than the budget of {n} tokens")
    if d < 2:
        raise ValueError(f"visionzip: a budget of {n} with dominant={d}, contextual={c} leaves no patch: the "
                         "dominant tokens are the CLS token and at least one patch (dominant >= 2)")
    return d, c


def schedule(config, options: VisionZipOptions, num_layers: int, num_visual: int) -> list[Stage]:
    """``[Stage(0, D - 1, C + 1)]``: the D - 1 dominant patches are kept; CLS and the C contextual tokens are
    the merged ones (D + C = the budget)."""
    d, c = split(config.resolve(num_layers, num_visual), options)
    return [Stage(0, d - 1, c + 1)]


def dominant_scores(cls_attention: Tensor) -> Tensor:
    """``[I, V]``: the CLS token's attention to each patch, summed over the heads (``[I, h, V]`` in)."""
    return cls_attention.sum(dim=1)


def remaining_patches(kept: Tensor, num_tokens: int) -> Tensor:
    """``[I, V - n]`` the patches not in ``kept`` ``[I, n]``, ascending (a stable sort puts the unkept first)."""
    is_kept = torch.zeros(kept.shape[0], num_tokens, dtype=torch.uint8, device=kept.device)
    is_kept.scatter_(1, kept, 1)
    order = torch.sort(is_kept, dim=-1, stable=True).indices
    return order[:, : num_tokens - kept.shape[1]]


def target_positions(remaining: int, contextual: int, device=None) -> tuple[Tensor, Tensor]:
    """The official targets among the ``remaining`` tokens (every ``max(1, M // C)``-th, the first C) and the
    other positions, both ascending, made on the device (no host-to-device copy)."""
    step = max(1, remaining // contextual)
    targets = torch.arange(0, remaining, step, device=device)[:contextual]
    if targets.shape[0] != contextual:
        raise ValueError(f"visionzip: {remaining} remaining patches cannot give {contextual} contextual tokens")
    is_target = torch.zeros(remaining, dtype=torch.uint8, device=device).scatter_(0, targets, 1)
    others = torch.sort(is_target, stable=True).indices[: remaining - contextual]
    return targets, others


def contextual_tokens(metric: Tensor, hidden: Tensor, contextual: int) -> Tensor:
    """``[I, C, Dv]`` the contextual tokens of the remaining patches.

    ``metric`` ``[I, M, d]``: the remaining patches' keys (mean over heads), ``hidden`` ``[I, M, Dv]``: their
    features, both in ascending patch order. Every non-target joins its most similar target (normalised dot
    product, the first target on a tie); each target adds the mean of the features that joined it."""
    targets, others = target_positions(metric.shape[1], contextual, metric.device)
    unit = metric / metric.norm(dim=-1, keepdim=True)
    similarity = unit[:, others] @ unit[:, targets].transpose(1, 2)  # [I, M - C, C]
    choice = similarity.argmax(dim=-1)
    one_hot = torch.zeros(*choice.shape, contextual, dtype=hidden.dtype, device=hidden.device)
    one_hot.scatter_(2, choice.unsqueeze(-1), 1)
    joined = one_hot.sum(dim=1).clamp(min=1).unsqueeze(-1)  # [I, C, 1]: how many joined each target
    mean_joined = one_hot.transpose(1, 2) @ hidden[:, others] / joined
    return hidden[:, targets] + mean_joined


def _gather(x: Tensor, index: Tensor) -> Tensor:
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def _anyres(options: VisionZipOptions, merge: str) -> str:
    """The official LLaVA-NeXT path (``prepare_inputs_labels_for_multimodal_visionzip``): flat concatenates every
    view's tokens; spatial_unpad lays them out its own way, without unpad or newlines; spatial fails there."""
    if merge == "flat":
        return "visionzip_flat"
    if merge == "spatial":
        raise ValueError("--prune-method visionzip on LLaVA-1.6 with mm_patch_merge_type spatial: the official code "
                         "has no working path for it (that branch permutes its 3-D features as 5-D); use a "
                         "spatial_unpad or flat checkpoint")
    if not options.strip_unpad:
        raise ValueError("--prune-method visionzip on LLaVA-1.6: its official code prunes each view (base and crops) "
                         "with the budget per view and lays the crops' dominant tokens on their full grid without "
                         "unpad or image_newline; pass --prune-option strip_unpad=true to run it that way")
    return "visionzip"


@register("visionzip", stage="vision", options=VisionZipOptions, schedule=schedule, anyres=_anyres)
def visionzip(inputs: VisionInputs, n_keep: int) -> Selection:
    d, c = split(inputs.config.resolve(1, inputs.num_tokens), inputs.options)  # layer 0: N does not depend on L
    if n_keep != d - 1:
        raise RuntimeError(f"visionzip: asked to keep {n_keep} patches, but its split is {d} dominant (CLS "
                           f"included) + {c} contextual")
    layer = inputs.select_layer - 1  # the encoder layer whose output LLaVA takes: layers[-2] for select layer -2
    if layer < 0:
        raise ValueError("visionzip reads the encoder layer that produces LLaVA's features: "
                         "mm_vision_select_layer must be after the first encoder layer")
    scores = dominant_scores(inputs.cls_attention(layer))
    kept = top_n(scores, n_keep)
    cls = inputs.vision_hidden(inputs.select_layer)[:, :1]  # [I, 1, Dv]
    extra = [cls]
    if c:
        rest = remaining_patches(kept, inputs.num_tokens)
        metric = _gather(inputs.patch_keys(layer).mean(dim=1), rest)
        extra.append(contextual_tokens(metric, _gather(inputs.features, rest), c).to(cls.dtype))
    merged = inputs.project(torch.cat(extra, dim=1))
    return Selection(kept=kept, scores=scores, merged=merged)
