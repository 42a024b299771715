"""What a pruning method may read at one stage, computed only when it asks.

The hook builds one :class:`StageContext` per pruning stage (the whole batch) and one
:class:`PruneInputs` per group of images (images of any rows with the same token count and budget).
Everything a method reads comes from the prefill itself: the post-RoPE query/key states that layer K-1
produced (image and text tokens), the hidden states entering layer K, attention rows recomputed from
those states, the next layer's own query/key (PDrop scores with them), where the instruction text sits,
and the prompt's input embeddings. Nothing is computed for a method that does not ask.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from entropyprune.attention import attention_rows, rotate

if TYPE_CHECKING:
    from entropyprune.config import PruneConfig


@dataclass
class StageContext:
    """One pruning stage of one batch, on the device (built by the hook at layer K)."""

    layer: int  # K: the stage runs before decoder layer K
    hidden: Tensor  # [B, T, D] entering layer K (the output of layer K-1)
    capture: dict  # {"query": [B, h, T, d], "key": [B, h_kv, T, d]}: layer K-1's post-RoPE states
    position_ids: Tensor  # [B, T] of the current tokens
    valid: Tensor  # [B, T] bool
    last_slot: Tensor  # [B] slot of each row's last prompt token
    text_slots: Tensor  # [B, Lt] slots of the instruction (text after the row's last image, to the prompt end)
    text_mask: Tensor  # [B, Lt] bool
    model: Any = None  # the language model (``layers``, ``norm``, ``rotary_emb``), for next-layer states
    input_embeds: Tensor | None = None  # [B, T0, D] the prompt's embeddings before layer 0 (original slots)
    text_slots_original: Tensor | None = None  # [B, Lt] the instruction's slots in input_embeds
    text_mask_original: Tensor | None = None  # [B, Lt] bool
    groups: list = field(default_factory=list)  # every PruneInputs of this stage
    memo: dict = field(default_factory=dict)
    text_lengths: list | None = None  # host ints: instruction tokens of each row (None: a row without images)

    def cached(self, key: Any, fn: Callable[[], Any]) -> Any:
        if key not in self.memo:
            self.memo[key] = fn()
        return self.memo[key]

    def next_layer_states(self) -> tuple[Tensor, Tensor]:
        """Layer K's own post-RoPE query/key ``[B, h, T, d]`` of the hidden states entering it."""

        def compute():
            layer = self.model.layers[self.layer]
            attn = layer.self_attn
            b, t, _ = self.hidden.shape
            x = layer.input_layernorm(self.hidden)
            q = attn.q_proj(x).view(b, t, attn.num_heads, attn.head_dim).transpose(1, 2)
            k = attn.k_proj(x).view(b, t, attn.num_kv_heads, attn.head_dim).transpose(1, 2)
            cos, sin = self.model.rotary_emb(self.position_ids, q.dtype)
            return rotate(q, cos, sin), rotate(k, cos, sin)

        return self.cached("next_layer_states", compute)


class PruneInputs:
    """The images of one group at one stage, and everything a method may ask about them.

    Built by the hook with a context; tests may build one from plain tensors (``states``, ``hidden``).
    Shapes: I images of v tokens each (their current tokens, after earlier stages), h heads of size d.
    """

    def __init__(self, states: Tensor | None = None, hidden: Tensor | None = None, num_heads: int | None = None,
                 config: PruneConfig | None = None, options: Any = None, *, context: StageContext | None = None,
                 rows: Tensor | None = None, slots: Tensor | None = None, original: Tensor | None = None,
                 original_slots: Tensor | None = None, extras: dict | None = None):
        self.config = config
        self.options = options
        self.context = context
        self.rows = rows  # [I] batch row of each image
        self.slots = slots  # [I, v] current slot of each of the image's tokens
        self.original = original  # [I, v] index of each token in the image's original span (-1: merged)
        self.original_slots = original_slots  # [I, V0] slots of the image's original tokens in input_embeds
        self._states = states
        self._hidden = hidden
        self._num_heads = num_heads
        self.extras = extras or {}

    def forget(self) -> None:
        """Drop what was computed on demand, so a second call costs what the first did (benchmarks)."""
        if self.context is not None:
            self._states = self._hidden = None
            self.context.memo.clear()

    # -------------------------------------------------------------------------------- image tokens
    @property
    def states(self) -> Tensor:
        """``[I, v, h, d]`` post-RoPE ``config.states`` (query or key) of the image tokens, layer K-1."""
        if self._states is None:
            self._states = self.image_states(self.config.states)
        return self._states

    @states.setter
    def states(self, value: Tensor) -> None:
        self._states = value

    def image_states(self, which: str) -> Tensor:
        """``[I, v, h, d]`` post-RoPE query or key states of the image tokens, from layer K-1."""
        x = self.context.capture[which]  # [B, h, T, d]
        return x[self.rows[:, None], :, self.slots]

    @property
    def hidden(self) -> Tensor:
        """``[I, v, D]`` hidden states of the image tokens entering layer K."""
        if self._hidden is None:
            self._hidden = self.context.hidden[self.rows[:, None], self.slots]
        return self._hidden

    @property
    def num_heads(self) -> int:
        if self._num_heads is None:
            self._num_heads = self.context.capture["query"].shape[1]
        return self._num_heads

    @property
    def num_images(self) -> int:
        return (self.rows if self.rows is not None else self.states).shape[0]

    # -------------------------------------------------------------------------------- the rest of the row
    def row_states(self, which: str) -> Tensor:
        """``[I, h, T, d]`` post-RoPE query or key states of every token of each image's row (layer K-1)."""
        return self.context.capture[which][self.rows]

    def row_hidden(self) -> Tensor:
        """``[I, T, D]`` hidden states of every token of each image's row, entering layer K."""
        return self.context.hidden[self.rows]

    @property
    def text_slots(self) -> tuple[Tensor, Tensor]:
        """``([I, Lt] slots, [I, Lt] mask)`` of the instruction: the text after the row's last image up to
        the end of the prompt (the question and the assistant prefix), padded to the longest."""
        return self.context.text_slots[self.rows], self.context.text_mask[self.rows]

    @property
    def last_slot(self) -> Tensor:
        """``[I]`` slot of the row's last prompt token (the token whose next-token logits start the answer)."""
        return self.context.last_slot[self.rows]

    def attention(self, query_slots: Tensor | str = "last", source: str = "previous") -> Tensor:
        """Attention ``[I, Q, h, v]`` that query tokens pay to this image's tokens, recomputed.

        ``query_slots``: ``"last"`` (the last prompt token, Q = 1) or ``[I, Q]`` slots of the row.
        ``source``: ``"previous"``, the attention of layer K-1 (from its captured states), or ``"next"``,
        the attention layer K is about to compute (its norm, projections and RoPE on the hidden states
        entering it). Softmax over every key the query sees (causal, padding excluded), in float32.
        """
        if isinstance(query_slots, str):
            if query_slots != "last":
                raise ValueError(f"query_slots must be 'last' or a slot tensor, got {query_slots!r}")
            query_slots = self.last_slot[:, None]
        if source == "previous":
            q_all, k_all = self.context.capture["query"], self.context.capture["key"]
        elif source == "next":
            q_all, k_all = self.context.next_layer_states()
        else:
            raise ValueError(f"source must be 'previous' or 'next', got {source!r}")
        rows = self.rows
        q = q_all[rows[:, None], :, query_slots].transpose(1, 2)  # [I, Q, h, d] -> [I, h, Q, d]
        probs = attention_rows(q, k_all[rows], query_slots, self.context.valid[rows])  # [I, Q, h, T]
        index = self.slots[:, None, None, :].expand(-1, probs.shape[1], probs.shape[2], -1)
        return probs.gather(3, index)

    def final_norm(self, x: Tensor) -> Tensor:
        """The language model's final RMSNorm (DART compares tokens after it)."""
        return self.context.model.norm(x)

    # -------------------------------------------------------------------------------- batch-wide work
    def token_scores(self, key: Any, fn: Callable[[Tensor], Tensor], which: str | None = None) -> Tensor:
        """``fn`` applied once to the image tokens of *every* group of this stage, this group's part.

        For per-token scores (``fn``: ``[N, h, d]`` states -> ``[N]`` scores) this makes one call for
        all images whatever their sizes, e.g. one eigen-solve for the entropy of every image token.
        """
        which = which or self.config.states
        if self.context is None:
            return fn(self.states.reshape(-1, *self.states.shape[2:])).reshape(self.states.shape[:2])

        def compute():
            groups = self.context.groups
            parts = [g.states if which == self.config.states else g.image_states(which) for g in groups]
            flat = torch.cat([p.reshape(-1, *p.shape[2:]) for p in parts])
            return dict(zip([id(g) for g in groups], fn(flat).split([p.shape[0] * p.shape[1] for p in parts]),
                            strict=True))

        mine = self.context.cached((key, which), compute)[id(self)]
        return mine.reshape(self.num_images, -1)
