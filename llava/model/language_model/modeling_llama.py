"""The Llama language model of LLaVA-1.5, written to be read top to bottom.

Module and weight names follow transformers' Llama (`layers.N.self_attn.q_proj`, ...), so checkpoints load
as they are. What differs is that we own the forward pass:

- `LlamaModel.forward` is one explicit loop over the decoder layers. The visual-token pruning hook sits in
  that loop (see `entropyprune.hook`): at layer K it swaps the hidden states for the kept tokens.
- RoPE is computed from arbitrary position ids, so the gapped positions of kept tokens need no special case.
- The KV cache (`KVCache`) is explicit. Layers may hold different numbers of tokens: after pruning, layers
  < K hold the full prompt and layers >= K only the kept tokens. Layers with the same token layout share a
  "segment": one validity mask, one fill length, one attention mask per forward.
- Nothing inside the layer loop reads a tensor value on the host: no `.item()`, no branching on data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

try:  # optional: the `flash` extra
    from flash_attn import flash_attn_func as _flash_attn_func
except Exception:  # pragma: no cover - flash-attn needs CUDA
    _flash_attn_func = None

ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")


def flash_attn_available() -> bool:
    return _flash_attn_func is not None


# ----------------------------------------------------------------------------------------------------------
# KV cache


@dataclass
class Segment:
    """Layers that share one token layout in the cache.

    valid[b, j] says whether cache slot j of row b holds a real token (False for padding). Slots are in the
    original token order, so causality is simply slot order.
    """

    layers: range
    valid: torch.Tensor  # [B, capacity] bool
    length: int = 0  # filled slots (python int: no device sync to read it)
    has_padding: bool = False
    # [B] subtracted from the original position ids of new tokens, for layers whose tokens were renumbered
    # (methods whose official code renumbers after pruning); None: original (gapped) positions.
    position_offset: torch.Tensor | None = None


@dataclass
class KVCache:
    """Per-layer key/value buffers, preallocated with `extra` free slots for decoding."""

    num_layers: int
    extra: int = 0
    keys: list = field(default_factory=list)
    values: list = field(default_factory=list)
    segments: list = field(default_factory=list)
    segment_of_layer: list = field(default_factory=list)
    next_position: torch.Tensor | None = None  # [B] position id of the next token, original numbering

    def __post_init__(self):
        self.keys = [None] * self.num_layers
        self.values = [None] * self.num_layers
        self.segment_of_layer = [None] * self.num_layers

    @property
    def empty(self) -> bool:
        return not self.segments

    def layer_lengths(self) -> list[int]:
        """Tokens held by each layer (what the cache costs), read without touching the device."""
        return [self.segments[s].length if s is not None else 0 for s in self.segment_of_layer]

    def nbytes(self) -> int:
        total = 0
        for i, k in enumerate(self.keys):
            if k is None:
                continue
            n = self.segments[self.segment_of_layer[i]].length
            total += 2 * k.shape[0] * k.shape[1] * n * k.shape[3] * k.element_size()
        return total

    def open_segment(self, layers: range, batch: int, device, has_padding: bool,
                     position_offset: torch.Tensor | None = None) -> int:
        """Start a new token layout for `layers` (at prefill: all layers, then the pruned ones)."""
        seg = Segment(layers=layers, valid=torch.zeros(batch, 0, dtype=torch.bool, device=device),
                      has_padding=has_padding, position_offset=position_offset)
        self.segments.append(seg)
        idx = len(self.segments) - 1
        for i in layers:
            self.segment_of_layer[i] = idx
            self.keys[i] = self.values[i] = None
        return idx

    def extend_segment(self, idx: int, new_valid: torch.Tensor) -> int:
        """Append T new slots to a segment's validity mask; returns the first new slot."""
        seg = self.segments[idx]
        start, t = seg.length, new_valid.shape[1]
        if start + t > seg.valid.shape[1]:
            grown = torch.zeros(seg.valid.shape[0], start + t + self.extra, dtype=torch.bool,
                                device=seg.valid.device)
            grown[:, :start] = seg.valid[:, :start]
            seg.valid = grown
        seg.valid[:, start:start + t] = new_valid
        seg.length = start + t
        return start

    def update(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor):
        """Write this step's keys/values at slots [start, start+T) and return all filled slots."""
        end = start + k.shape[2]
        buf_k, buf_v = self.keys[layer], self.values[layer]
        if buf_k is None or end > buf_k.shape[2]:
            cap = end + self.extra
            new_k = k.new_empty(k.shape[0], k.shape[1], cap, k.shape[3])
            new_v = v.new_empty(v.shape[0], v.shape[1], cap, v.shape[3])
            if buf_k is not None:
                new_k[:, :, :start] = buf_k[:, :, :start]
                new_v[:, :, :start] = buf_v[:, :, :start]
            buf_k, buf_v = self.keys[layer], self.values[layer] = new_k, new_v
        buf_k[:, :, start:end] = k
        buf_v[:, :, start:end] = v
        return buf_k[:, :, :end], buf_v[:, :, :end]


# ----------------------------------------------------------------------------------------------------------
# Building blocks


class LlamaRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x.to(dtype)


class LlamaRotaryEmbedding(nn.Module):
    """cos/sin tables computed from position ids directly, so gapped positions cost nothing extra."""

    def __init__(self, head_dim: int, base: float = 10000.0, scaling: dict | None = None):
        super().__init__()
        self.head_dim, self.base = head_dim, base
        self.position_scale = 1.0
        if scaling:
            kind = scaling.get("rope_type", scaling.get("type", "default"))
            if kind == "linear":
                self.position_scale = 1.0 / float(scaling["factor"])
            elif kind != "default":
                raise NotImplementedError(f"rope_scaling type {kind!r} is not supported (only 'linear')")
        self.register_buffer("inv_freq", self._inv_freq(), persistent=False)

    def _inv_freq(self, device=None) -> torch.Tensor:
        exps = torch.arange(0, self.head_dim, 2, dtype=torch.int64, device=device).float() / self.head_dim
        return 1.0 / (self.base ** exps)

    def reset_parameters(self, device=None):
        self.inv_freq = self._inv_freq(device)

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype):
        pos = position_ids.float() * self.position_scale
        freqs = pos[..., None] * self.inv_freq.to(pos.device)  # [B, T, d/2]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]  # [B, 1, T, d]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin):
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    if n_rep == 1:
        return x
    b, h, t, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, t, d).reshape(b, h * n_rep, t, d)


@dataclass
class AttendContext:
    """What every layer of one segment needs for this forward: where to write, which mask, which RoPE."""

    segment: int
    start: int
    cos: torch.Tensor
    sin: torch.Tensor
    mask: torch.Tensor | None  # [B, 1, T, S] bool (True = attend) or None
    causal: bool  # with mask None: plain causal attention (prefill without padding)
    padded: bool


class LlamaAttention(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.attn_implementation = config.attn_implementation
        bias = config.attention_bias
        d = config.hidden_size
        self.q_proj = nn.Linear(d, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(d, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(d, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, d, bias=bias)

    def forward(self, x: torch.Tensor, ctx: AttendContext, cache: KVCache, capture: dict | None = None):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, ctx.cos, ctx.sin)
        if capture is not None:
            # The pruning hook scores tokens from these post-RoPE states; no second pass is needed.
            capture["query"], capture["key"] = q, k
        # Without a cache (a training forward under gradient checkpointing) the keys are this call's own.
        k_all, v_all = (k, v) if cache is None else cache.update(self.layer_idx, ctx.start, k, v)
        out = self._attend(q, k_all, v_all, ctx)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))

    def _attend(self, q, k, v, ctx: AttendContext) -> torch.Tensor:
        impl = self.attn_implementation
        if (impl == "flash_attention_2" and _flash_attn_func is not None and not ctx.padded and q.is_cuda
                and q.dtype in (torch.float16, torch.bfloat16)):
            # flash-attn aligns the causal mask bottom-right, which is what a decode step needs.
            out = _flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=q.shape[2] > 1)
            return out.transpose(1, 2)
        n_rep = self.num_heads // self.num_kv_heads
        k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
        if impl == "eager":
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim)
            if ctx.mask is not None:
                scores = scores.masked_fill(~ctx.mask, torch.finfo(scores.dtype).min)
            elif ctx.causal:
                t, s = scores.shape[-2:]
                causal = torch.ones(t, s, dtype=torch.bool, device=q.device).tril(s - t)
                scores = scores.masked_fill(~causal, torch.finfo(scores.dtype).min)
            probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
            return probs @ v
        return F.scaled_dot_product_attention(q, k, v, attn_mask=ctx.mask, is_causal=ctx.mask is None and ctx.causal)


class LlamaMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        d, m, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = nn.Linear(d, m, bias=bias)
        self.up_proj = nn.Linear(d, m, bias=bias)
        self.down_proj = nn.Linear(m, d, bias=bias)
        if config.hidden_act != "silu":
            raise NotImplementedError(f"hidden_act {config.hidden_act!r} is not supported (Llama uses 'silu')")

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config, layer_idx: int):
        super().__init__()
        self.self_attn = LlamaAttention(config, layer_idx)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, x, ctx: AttendContext, cache: KVCache, capture: dict | None = None):
        x = x + self.self_attn(self.input_layernorm(x), ctx, cache, capture)
        return x + self.mlp(self.post_attention_layernorm(x))


def _on(t: torch.Tensor | None, device) -> torch.Tensor | None:
    return None if t is None else t.to(device, non_blocking=True)


# ----------------------------------------------------------------------------------------------------------
# The model


class LlamaModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config.head_dim, config.rope_theta, config.rope_scaling)
        self.gradient_checkpointing = False  # training: recompute each layer in the backward pass

    def set_attn_implementation(self, impl: str) -> None:
        if impl not in ATTN_IMPLEMENTATIONS:
            raise ValueError(f"unknown attn_implementation {impl!r}; choose one of {', '.join(ATTN_IMPLEMENTATIONS)}")
        if impl == "flash_attention_2" and not flash_attn_available():
            raise ValueError("attn_implementation 'flash_attention_2' needs flash-attn: pip install -e '.[flash]'")
        self.config.attn_implementation = impl
        for layer in self.layers:
            layer.self_attn.attn_implementation = impl

    def _context(self, cache: KVCache, seg_idx: int, new_valid: torch.Tensor, position_ids, dtype) -> AttendContext:
        """Extend segment `seg_idx` by this step's tokens and build its mask and RoPE tables."""
        start = cache.extend_segment(seg_idx, new_valid)
        seg = cache.segments[seg_idx]
        t = new_valid.shape[1]
        if start > 0 and seg.position_offset is not None:
            # Decoding after a renumbering stage: these layers count positions from their own kept tokens.
            position_ids = position_ids - seg.position_offset[:, None]
        cos, sin = self.rotary_emb(position_ids, dtype)
        causal = not seg.has_padding and t > 1 and start == 0  # plain causal prefill: no mask tensor needed
        mask = None
        if seg.has_padding or (t > 1 and start > 0):
            slots = torch.arange(start + t, device=new_valid.device)
            query_slots = start + torch.arange(t, device=new_valid.device)
            allowed = slots[None, :] <= query_slots[:, None]  # [T, S]: slot order is causal order
            if seg.has_padding:
                # A padding query sees no valid key; let it see itself so its (unused) output stays finite.
                allowed = (seg.valid[:, None, : start + t] & allowed) | (slots[None, :] == query_slots[:, None])
                mask = allowed[:, None]  # [B, 1, T, S]
            else:
                mask = allowed[None, None]  # [1, 1, T, S]
        return AttendContext(seg_idx, start, cos, sin, mask, causal, seg.has_padding)

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        prune_hook=None,
        observe_states=None,
        has_padding: bool | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the decoder on new tokens.

        inputs_embeds [B, T, D]; position_ids [B, T]; attention_mask [B, T] (1 = real token) or None;
        cache: appended to (a fresh one is made when None); prune_hook: applied before each of its layers
        (``prune_hook.layers``) during prefill, with the states layer K-1 produced;
        observe_states: called as ``observe_states(layer, query, key)`` with every layer's post-RoPE states
        ``[B, h, T, d_h]``, exactly those attention used (the ECL tool reads them; nothing else changes);
        has_padding: whether any row of a prefill carries padding, as the caller knows it on the host (the
        splice does); when None it is read from ``attention_mask``, which costs one device sync per prefill.
        Returns (hidden states after the final norm, position ids of the returned tokens): after pruning both
        cover only the kept tokens.
        """
        b, t, _ = inputs_embeds.shape
        device = inputs_embeds.device
        cache = cache if cache is not None else KVCache(len(self.layers))
        new_valid = (attention_mask.bool() if attention_mask is not None
                     else torch.ones(b, t, dtype=torch.bool, device=device))
        if cache.empty:
            # Decided once, before the loop: whether any row carries padding chooses the attention path.
            padded = has_padding
            if padded is None:
                padded = attention_mask is not None and not bool(new_valid.all())
            cache.open_segment(range(len(self.layers)), b, device, padded)
        elif prune_hook is not None:
            raise ValueError("pruning applies at prefill only; pass prune_hook=None when decoding with a cache")

        x = inputs_embeds
        ctx = None
        capture: dict = {}
        stages = prune_hook.layers if prune_hook is not None else ()
        next_position = position_ids[:, -1] + 1  # in the original numbering, whatever pruning renumbers
        for i, layer in enumerate(self.layers):
            if i in stages:
                x, position_ids, new_valid = prune_hook(i, x, position_ids, new_valid, capture, self)
                seg = cache.open_segment(range(i, len(self.layers)), b, device, prune_hook.padded_after[i],
                                         _on(prune_hook.offset(i), device))
                ctx = self._context(cache, seg, new_valid, position_ids, x.dtype)
            elif ctx is None or cache.segment_of_layer[i] != ctx.segment:
                ctx = self._context(cache, cache.segment_of_layer[i], new_valid, position_ids, x.dtype)
            wants_states = observe_states is not None or (i + 1) in stages
            if (self.gradient_checkpointing and self.training and torch.is_grad_enabled() and not wants_states
                    and ctx.start == 0):
                # A training prefill writes nothing the backward pass needs into the cache: skip it there.
                x = torch.utils.checkpoint.checkpoint(layer, x, ctx, None, None, use_reentrant=False)
                continue
            x = layer(x, ctx, cache, capture if wants_states else None)
            if observe_states is not None:
                observe_states(i, capture["query"], capture["key"])
        cache.next_position = next_position
        return self.norm(x), position_ids
