"""What a vision-stage method may read: one image group's vision-tower internals, computed when asked.

A vision-stage method (registry ``stage="vision"``, written ``layer 0``) runs after the vision tower and
before the splice, on every image of a batch at once. It has the same signature as an in-LLM method,
``fn(inputs: VisionInputs, n_keep: int) -> Selection``, and returns:

* ``kept`` ``[I, n_keep]``: ascending indices into the image's V patch tokens;
* ``scores`` ``[I, V]``: one float per patch that explains the choice;
* optionally ``embeds`` ``[I, n_keep, D]`` replacing the kept tokens (in the language model's input
  space: project vision-space features with :meth:`VisionInputs.project`) and ``merged`` ``[I, M, D]``,
  new tokens placed after the kept ones (M declared by the schedule's ``Stage.merged``).

An adaptive method (one that picks its own count per image, e.g. PruMerge) returns a list of I
``Selection`` objects, one per image, with 1-D ``kept`` ``[n_i]``, ``scores`` ``[V]``, ``embeds``
``[n_i, D]`` and ``merged`` ``[m_i, D]``. The splice then needs each n_i on the host: that is one
device-to-host copy per batch, before the language model starts.

The image group holds I images of V patches each; the tower has ``num_layers`` encoder layers. Vision
indices follow transformers' ``hidden_states`` tuple: ``vision_hidden(0)`` is the input of encoder layer
0 (after CLIP's pre-layernorm), ``vision_hidden(i)`` the input of layer i, ``vision_hidden(num_layers)``
the last layer's output. LLaVA's features are ``vision_hidden(select_layer)`` (23 of 24 for LLaVA-1.5's
``mm_vision_select_layer=-2``) without the CLS token.

Nothing here imports ``llava``: the model side passes the tower (a transformers ``CLIPVisionModel``),
the projector and the text encoder in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from entropyprune.config import PruneConfig


class VisionInputs:
    """The images of one group (same patch count) at the vision stage.

    ``hidden_states``: the tower's ``hidden_states`` tuple, each ``[I, 1+V, Dv]`` (CLS first).
    ``tower``: the ``CLIPVisionModel`` (for its encoder layers' q/k projections and ``post_layernorm``).
    ``project``: the LLaVA projector, ``[..., Dv] -> [..., D]``.
    ``instructions``: each image's instruction text (its prompt's question), or None where unknown.
    ``text_encoder``: ``list[str] -> [[S_i, P], ...]`` CLIP text embeddings (``text_projection`` of the
    pooled output), one row per 77-token segment of each text, present when the method needs it;
    ``image_projection``: CLIP's ``visual_projection``.
    Tests may give ``features`` (``[I, V, Dv]``) and ``projected`` (``[I, V, D]``) directly.
    """

    def __init__(self, *, config: PruneConfig | None = None, options: Any = None,
                 hidden_states: Sequence[Tensor] | None = None, select_layer: int | None = None,
                 tower: Any = None, project: Callable[[Tensor], Tensor] | None = None,
                 features: Tensor | None = None, projected: Tensor | None = None,
                 instructions: Sequence[str | None] | None = None,
                 text_encoder: Callable[[list[str]], Tensor] | None = None,
                 image_projection: Callable[[Tensor], Tensor] | None = None,
                 grid: tuple[int, int] | None = None, memo: dict | None = None, group: int = 0,
                 view_image: Tensor | None = None):
        self.config = config
        self.options = options
        self._hidden = hidden_states
        self.tower = tower
        self._project = project
        self._features = features
        self._projected = projected
        self.instructions = list(instructions) if instructions is not None else None
        self._text_encoder = text_encoder
        self._image_projection = image_projection
        self.memo = memo if memo is not None else {}
        self._group = group
        # LLaVA-1.6, a method that prunes each view: the rows are views, and this ``[I]`` long tensor (on the
        # features' device) says which image of the call each belongs to; None when every row is an image.
        self.view_image = view_image
        # The select layer as the caller gave it (LLaVA's ``mm_vision_select_layer``, e.g. -2), before it is
        # made non-negative below: :meth:`select_attention_layer` needs the sign.
        self.select_layer_given = select_layer
        if hidden_states is not None:
            n = len(hidden_states) - 1
            if select_layer is None:
                select_layer = -2
            self.select_layer = select_layer % (n + 1) if select_layer < 0 else select_layer
        else:
            self.select_layer = select_layer
        if grid is None:
            side = int(round(self.num_tokens ** 0.5))
            grid = (side, side) if side * side == self.num_tokens else (1, self.num_tokens)
        self.grid = grid  # (rows, columns) of the patch grid, row-major token order

    # ------------------------------------------------------------------ sizes
    @property
    def num_images(self) -> int:
        return self._sized.shape[0]

    @property
    def num_tokens(self) -> int:
        """V, the patch tokens of each image (CLS excluded)."""
        return self._sized.shape[1]

    @property
    def _sized(self) -> Tensor:
        # Given only projected tokens (LLaVA-1.6's merged sequence, newlines included), they give the sizes.
        if self._features is None and self._hidden is None and self._projected is not None:
            return self._projected
        return self.features

    @property
    def num_layers(self) -> int:
        """Encoder layers of the vision tower."""
        if self._hidden is None:
            raise ValueError("these VisionInputs carry no vision-tower states")
        return len(self._hidden) - 1

    @property
    def device(self) -> torch.device:
        return self._sized.device

    # ------------------------------------------------------------------ features
    @property
    def features(self) -> Tensor:
        """``[I, V, Dv]`` the patch features LLaVA feeds to its projector (the selected layer, no CLS)."""
        if self._features is None:
            self._features = self.vision_hidden(self.select_layer)[:, 1:]
        return self._features

    @property
    def projected(self) -> Tensor:
        """``[I, V, D]`` the features after the projector: the language model's input embeddings."""
        if self._projected is None:
            self._projected = self.project(self.features)
        return self._projected

    def project(self, x: Tensor) -> Tensor:
        """The LLaVA projector applied to vision-space features ``[..., Dv]`` (merged tokens, say)."""
        if self._project is None:
            raise ValueError("these VisionInputs have no projector")
        return self._project(x)

    def kept_embeds(self, kept: Tensor) -> Tensor:
        """``[I, n, D]`` the projected features of the ``kept`` ``[I, n]`` patches.

        The projector works token by token, so projecting only the kept patches gives what projecting all
        and gathering would; it is done that way unless the method already asked for every projection.
        """
        if self._projected is not None:
            return self._projected.gather(1, kept[..., None].expand(-1, -1, self._projected.shape[-1]))
        feats = self.features
        return self.project(feats.gather(1, kept[..., None].expand(-1, -1, feats.shape[-1])))

    # ------------------------------------------------------------------ vision tower internals
    def vision_hidden(self, index: int) -> Tensor:
        """``[I, 1+V, Dv]`` the tower's hidden states entering encoder layer ``index`` (CLS first)."""
        if self._hidden is None:
            raise ValueError("these VisionInputs carry no vision-tower states")
        return self._hidden[index]

    def _layers(self):
        tower = self.tower
        model = getattr(tower, "vision_model", tower)
        return model.encoder.layers

    def vision_qk(self, layer: int) -> tuple[Tensor, Tensor]:
        """Query and key ``[I, h, 1+V, d]`` of encoder layer ``layer``: its ``layer_norm1`` and
        ``q_proj``/``k_proj`` on the states entering it, before any scaling (what a hook on those
        projections sees)."""
        layer = layer % self.num_layers if layer < 0 else layer

        def compute():
            block = self._layers()[layer]
            attn = block.self_attn
            x = block.layer_norm1(self.vision_hidden(layer))
            b, t, _ = x.shape
            heads = attn.num_heads
            q = attn.q_proj(x).view(b, t, heads, -1).transpose(1, 2)
            k = attn.k_proj(x).view(b, t, heads, -1).transpose(1, 2)
            return q, k

        return self.cached(("vision_qk", layer), compute)

    def cls_attention(self, layer: int) -> Tensor:
        """``[I, h, V]`` the attention the CLS token pays to each patch in encoder layer ``layer``, per
        head, as transformers' ``output_attentions`` gives it (softmax over CLS and every patch, scale
        ``d**-0.5``, float32), recomputed from that layer's q/k for the CLS row only."""
        layer = layer % self.num_layers if layer < 0 else layer

        def compute():
            q, k = self.vision_qk(layer)
            q, k = q.float(), k.float()
            logits = (q[:, :, :1] @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5  # [I, h, 1, 1+V]
            return logits.softmax(-1)[:, :, 0, 1:]

        return self.cached(("cls_attention", layer), compute)

    def select_attention_layer(self) -> int:
        """The encoder layer at ``attentions[mm_vision_select_layer]`` in transformers' L-entry ``attentions``
        tuple, indexed with the same number as the (L+1)-entry ``hidden_states`` (as VisPruner's official
        tower does): for LLaVA's -2 that is layer L-2, the layer whose output is the features; for a
        non-negative k it is layer k, whose input is the features."""
        given = -2 if self.select_layer_given is None else self.select_layer_given
        layers = self.num_layers
        if not -layers <= given < layers:
            raise ValueError(f"select layer {given} has no attention entry in a {layers}-layer tower "
                             f"(transformers' attentions tuple has indices {-layers}..{layers - 1})")
        return given % layers
    def cls_attention_full(self, layer: int) -> Tensor:
        """``[I, V]`` the CLS token's attention to each patch in encoder layer ``layer`` taken as ONE head
        over the full width (PruMerge): ``softmax((q_cls . k) * Dv**-0.5)`` over CLS and every patch, with
        q and k the whole ``q_proj``/``k_proj`` outputs (all heads concatenated, ``Dv = h * d``), float32,
        CLS column dropped. Not the mean of the per-head attentions."""
        layer = layer % self.num_layers if layer < 0 else layer

        def compute():
            q, k = self.vision_qk(layer)
            q, k = q.float(), k.float()
            width = q.shape[1] * q.shape[-1]
            logits = torch.einsum("ihd,ihtd->it", q[:, :, 0], k) * width ** -0.5  # [I, 1+V]
            return logits.softmax(-1)[:, 1:]

        return self.cached(("cls_attention_full", layer), compute)

    def patch_keys(self, layer: int) -> Tensor:
        """``[I, h, V, d]`` the patch tokens' keys in encoder layer ``layer`` (CLS removed)."""
        return self.vision_qk(layer)[1][:, :, 1:]

    # ------------------------------------------------------------------ text
    def text_embeds(self) -> list[Tensor]:
        """Per image, ``[S, P]``: the CLIP text embedding of its instruction, one row per 77-token segment
        (S = 1 unless the instruction is longer than CLIP's context) (CDPruner)."""
        if self._text_encoder is None:
            raise ValueError(f"{self.config.method if self.config else 'this method'} needs CLIP's text tower, "
                             "which was not loaded")
        if self.instructions is None or any(t is None for t in self.instructions):
            raise ValueError(
                f"{self.config.method if self.config else 'this method'} reads each prompt's instruction text: "
                "pass texts=[...] (one per prompt) to generate/forward; the eval drivers do")
        return self.cached("text_embeds", lambda: self._text_encoder(list(self.instructions)))

    def image_embeds(self) -> Tensor:
        """``[I, V, P]`` each patch in CLIP's joint image-text space: ``visual_projection(post_layernorm(
        features))``, as CDPruner computes it."""
        if self._image_projection is None:
            raise ValueError("CLIP's visual projection was not loaded (it comes with the text tower)")

        def compute():
            model = getattr(self.tower, "vision_model", self.tower)
            return self._image_projection(model.post_layernorm(self.features))

        return self.cached("image_embeds", compute)

    # ------------------------------------------------------------------ memo
    def cached(self, key: Any, fn: Callable[[], Any]) -> Any:
        key = (self._group, key)
        if key not in self.memo:
            self.memo[key] = fn()
        return self.memo[key]

    def forget(self) -> None:
        """Drop what was computed on demand, so a second call costs what the first did (benchmarks)."""
        self.memo.clear()
        if self._hidden is not None:
            self._features = None
        self._projected = None
