"""Attention recomputed from captured query/key states, for the methods that score by attention.

SDPA and flash-attn never return attention weights, and asking the model for them (eager attention,
``output_attentions``) would materialise every layer's T x T matrix. The methods only need the rows of a
few query tokens (the last prompt token, the instruction's tokens), so those rows are recomputed here
from the post-RoPE states the layer already produced: ``softmax(q k^T / sqrt(d_h))`` over every key the
query could see (causal order, padding excluded), exactly what the layer's attention computed.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def attention_rows(query: Tensor, key: Tensor, query_slots: Tensor, key_valid: Tensor) -> Tensor:
    """Attention probabilities of chosen query tokens over all keys of their row.

    query ``[I, h, Q, d]`` (the chosen tokens' post-RoPE queries), key ``[I, h_kv, T, d]`` (post-RoPE keys
    of the row), query_slots ``[I, Q]`` (each query's slot, for the causal cut), key_valid ``[I, T]`` bool.
    Returns float32 ``[I, Q, h, T]``; rows sum to one over the keys the query sees.
    """
    heads, kv_heads, d = query.shape[1], key.shape[1], query.shape[-1]
    if heads % kv_heads:
        raise ValueError(f"{heads} query heads cannot share {kv_heads} key heads")
    k = key.float()
    if kv_heads != heads:  # grouped-query attention: each key head serves heads / kv_heads query heads
        k = k.repeat_interleave(heads // kv_heads, dim=1)
    logits = torch.einsum("ihqd,ihtd->iqht", query.float(), k) / math.sqrt(d)
    t = key.shape[2]
    causal = torch.arange(t, device=key.device)[None, None, :] <= query_slots[:, :, None]  # [I, Q, T]
    visible = causal & key_valid[:, None, :]
    logits = logits.masked_fill(~visible[:, :, None, :], float("-inf"))
    return torch.softmax(logits, dim=-1)


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary position embedding (Llama's half-split convention) of ``x`` [..., T, d] with its tables."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin
