"""Analytic FLOPs and KV-cache accounting for LLaVA-style models with visual-token pruning.

This is the analytic side of the paper's efficiency analysis (Sec. 3.6, Eq. 15-16, Appendix A.4,
Table 5). It counts what the language model does layer by layer with the real token count of each
layer, so pruning at layer K (docs/Method.md, "The layer K") is exact rather than approximated.

Counting rules
==============

A multiply-add counts as 2 FLOPs. For one decoder layer that processes ``n`` new tokens, each of which
attends to ``n_ctx`` keys (``n_ctx = n`` in a prefill without cache), with hidden size ``d``, FFN size
``m``, ``h`` query heads, ``h_kv`` key/value heads and head size ``d_h``:

=============  =======================================  ================================
term           FLOPs                                    MHA LLaMA (h d_h = h_kv d_h = d)
=============  =======================================  ================================
q_proj         2 n d (h d_h)                            2 n d^2
k_proj         2 n d (h_kv d_h)                         2 n d^2
v_proj         2 n d (h_kv d_h)                         2 n d^2
o_proj         2 n (h d_h) d                            2 n d^2
attn_qk        2 (h d_h) * pairs                        2 n^2 d   (full)
attn_av        2 (h d_h) * pairs                        2 n^2 d   (full)
ffn            3 matmuls (gate, up, down): 6 n d m      6 n m d
=============  =======================================  ================================

``pairs`` is the number of (query, key) pairs. Two conventions are offered (argument ``attention``):

- ``"full"`` (default, the paper's convention): every query meets every key, ``pairs = n * n_ctx``.
  This is what Eq. 15 writes (``4 n^2 d``) and what a dense eager/SDPA kernel computes before masking.
- ``"causal"``: query ``i`` of the new block only meets the ``n_ctx - n`` cached keys and the keys up to
  itself, ``pairs = n (n_ctx - n) + n (n + 1) / 2``. This is the work a causal FlashAttention kernel
  actually needs.

A single decoding token attends to the whole cache plus itself under both conventions.

Summed, the MHA case gives the paper's per-layer formula exactly (tested)::

    F(n) = 4 n^2 d + 8 n d^2 + 6 n m d        (Eq. 15 / Eq. 41, full attention)

With grouped-query attention only ``k_proj`` and ``v_proj`` change (``h_kv d_h`` columns instead of
``d``); the attention matmuls still run once per *query* head. Element-wise work (RoPE ~6nd, softmax
~4n^2 h, SwiGLU activation ~2nm, RMSNorm and residuals, all O(n) or O(n^2 h) with small constants) is
left out, as in the paper's F(n); together it is < 0.2 % of a LLaVA-1.5-7B layer at n = 641.

Pruning, decoding, optional parts
---------------------------------

``prefill_flops`` sums over layers with the real token count of each layer: layers ``< K`` see
``n_text + n_images * V`` tokens, layers ``>= K`` see ``n_text + n_images * N`` (``N`` = visual tokens
kept per image). Each of ``decode_steps`` generated tokens then attends, in layer ``l``, to that
layer's cache (its prefill length plus the tokens generated so far) and to itself, so decoding is
cheaper after K too. Optional parts, all off by default because the paper's Eq. 15-16 count only the
decoder layers:

- ``include_lm_head``: the output projection ``2 d vocab`` per position. In prefill it is counted on
  every position that leaves the last layer (what LLaVA's forward computes and what a profiler such
  as calflops sees), in decoding once per step.
- ``vision``: the CLIP vision tower (every encoder layer runs, including the one after LLaVA's
  select layer -2) plus the ``mlp2x_gelu`` projector, once per image. Pruning inside the language
  model does not change it.

The budget meaning is :mod:`entropyprune.budget`'s, the one exact rule the runtime uses too:
``keep=N`` (N per image), ``avg_tokens=T`` (the papers' average over all L layers,
``N = floor((L*T - K*V) / (L-K))``), ``ratio=r`` (``N = round(r*V)``; r is the *kept* fraction,
halves rounded up, unlike the paper's Eq. 16, whose r is the *removed* fraction), N in [1, V].
``resolve_keep`` calls :func:`entropyprune.budget.keep_for_budget`, as
``entropyprune.config.PruneConfig.resolve`` does, so ``entropyprune flops`` and a run keep the same N.
``prefill_flops`` itself accepts any 0 <= N <= V.

LLaVA-1.6 (LLaVA-NeXT): V per image shape
-----------------------------------------

The presets ``llava-next-7b`` and ``llava-next-mistral-7b`` cut images into anyres crops; V for an image
of a given width x height is :func:`entropyprune.anyres_tokens.anyres_tokens` (base view + unpadded crop
grid + newlines, up to 2928), which ``entropyprune flops --image-size WxH`` passes as ``n_visual``, and
``views_per_image`` (base + crops) scales the vision count.

Table 5 reproduction (LLaVA-1.5-7B, MME, EntropyPrune rows)
===========================================================

Table 5 lists, for 576 (vanilla), 192 and 128 tokens: Prefill (s), Lat. (s), KV (MB), Mem. (GB),
FLOPs (%) and the MME score, for FastV, CDPruner and EntropyPrune. The EntropyPrune rows are
KV 95.8 / 63.9 MB and FLOPs 42.3 % / 32.7 % (text of Sec. 4.2/4.6: "reduces FLOPs by 57.7% and
67.3%"); vanilla is KV 288.0 MB, FLOPs 100.

*KV column.* 288.0 MB is exactly the fp16 cache of the 576 visual tokens alone over 32 layers
(576 * 32 * 2 * 4096 * 2 B = 288 MiB). 95.8 and 63.9 are exactly what ``avg_tokens`` 192 / 128 give
(N = 166 / 98 kept after K = 2: (2*576 + 30*166) / 32 = 191.6 tokens -> 95.8 MiB; 98 -> 63.9 MiB),
while ``keep=192`` would give 108.0 MiB. So the paper's budgets are averages (the release's
``max_num_trunction``), and its KV column counts visual tokens only, in MiB.

*FLOPs column.* The release measured FLOPs with calflops on one prefill of the first MME sample,
through the whole LLaVA model (CLIP tower included). The convention that reproduces it:

    avg_tokens (N = 166 / 98 after K = 2), an MME prompt of 62 text tokens (35 system tokens before
    the image + ~27 after it: "\\n{question}\\nAnswer the question using a single word or phrase.
    ASSISTANT:"), full attention, vision tower + projector counted, no decoding.

It gives 42.0 % and 32.5 % (paper 42.3 / 32.7); adding the LM head changes this by 0.1 point
(41.9 / 32.4), causal attention by +0.3 (42.3 / 32.8). The same convention gives 42.0 % / 32.5 % for
CDPruner (keep 192 / 128 before the language model, K = 0), against the paper's 42.7 / 33.2, which
supports it. If the attention matmuls are not counted at all (what a profiler that cannot see the
FlashAttention-2 kernel would report) the EntropyPrune rows become 42.6 / 33.1. The other conventions:

===================================================  ==========  ==========
convention (62 text tokens, full attention)          avg 192     avg 128
===================================================  ==========  ==========
avg_tokens, decoder layers only (Eq. 16 scope)       39.2 %      29.3 %
avg_tokens, + vision tower + projector (reproduces)  42.0 %      32.5 %
keep = T,   decoder layers only                      43.0 %      33.7 %
keep = T,   + vision tower + projector               45.6 %      36.7 %
paper Eq. 16 exact, visual tokens only, avg          32.8 %      21.9 %
paper simplified 1 - (L-K)/L * r, avg                33.3 %      22.2 %
paper Eq. 16 exact / simplified, keep = T            37.0 / 37.5 26.7 / 27.1
===================================================  ==========  ==========

``keep = T`` on the decoder layers alone also lands within 1.5 points (43.0 / 33.7) but contradicts
the KV column, so it is two omissions (no vision tower, too many kept tokens) cancelling. The
text-token count is an estimate (the exact count needs the Vicuna tokenizer); the reproducing
convention stays within 1.5 points, full or causal, for any prompt of 49 to 76 text tokens. The FastV
rows (45.3 / 35.7) are not explained by token counts: their KV numbers (96.3 / 64.2 MB) imply the
same ~192 / ~128 average tokens as EntropyPrune; the paper does not say how they were measured. The
abstract's "68.2% reduction in FLOPs" does not match Table 5's 67.3 % (100 - 32.7).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from entropyprune import budget
from entropyprune.anyres_tokens import LLAVA_NEXT_PINPOINTS, pinpoints_from_config
from entropyprune.budget import BudgetError

__all__ = [
    "LMShape",
    "VisionShape",
    "PRESETS",
    "ANYRES_PRESETS",
    "VISION_PRESETS",
    "anyres_pinpoints",
    "TABLE5",
    "BudgetError",
    "resolve_shape",
    "resolve_keep",
    "average_tokens",
    "layer_flops",
    "paper_layer_flops",
    "vision_flops",
    "prefill_flops",
    "simplified_ratio",
    "eq16_reduction",
    "kv_cache_bytes",
]

# LlamaConfig defaults: HF LLaVA configs leave out every text_config field equal to them.
_LLAMA_DEFAULTS = {
    "num_hidden_layers": 32,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_attention_heads": 32,
    "vocab_size": 32000,
}


@dataclass(frozen=True)
class LMShape:
    """The sizes of a decoder-only language model that FLOPs and KV cache depend on."""

    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"LMShape.{name} must be a positive integer, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"LMShape.num_heads ({self.num_heads}) must be a multiple of "
                f"num_kv_heads ({self.num_kv_heads})"
            )

    @classmethod
    def from_config(cls, src: str | os.PathLike | Mapping[str, Any]) -> LMShape:
        """Read a config.json (path to the file or to its folder, or the parsed dict).

        Accepts LLaVA's own format (the llama fields at the top level, ``LlavaLlamaForCausalLM``) and the
        HF ``LlavaForConditionalGeneration`` format (the llama fields under ``text_config``, where HF omits
        every field equal to the LlamaConfig default, which is then filled in). ``num_key_value_heads``
        defaults to ``num_attention_heads``; ``head_dim`` defaults to ``hidden_size // num_attention_heads``.
        """
        where = "config"
        if isinstance(src, Mapping):
            cfg: Mapping[str, Any] = src
        else:
            path = os.fspath(src)
            if os.path.isdir(path):
                path = os.path.join(path, "config.json")
            where = path
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path}: no such config file (expected a config.json or its folder)")
            with open(path, encoding="utf-8") as fh:
                try:
                    cfg = json.load(fh)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}: not valid JSON ({exc})") from exc
        if not isinstance(cfg, Mapping):
            raise ValueError(f"{where}: expected a JSON object")
        text = cfg.get("text_config")
        if isinstance(text, Mapping):
            fields = {**_LLAMA_DEFAULTS, **{k: v for k, v in text.items() if v is not None}}
        else:
            fields = dict(cfg)
            missing = [k for k in _LLAMA_DEFAULTS if k not in fields and k != "vocab_size"]
            if missing:
                raise ValueError(f"{where}: missing {', '.join(missing)} (neither LLaVA nor HF LLaVA format)")
            fields.setdefault("vocab_size", _LLAMA_DEFAULTS["vocab_size"])
        heads = int(fields["num_attention_heads"])
        kv_heads = fields.get("num_key_value_heads")
        head_dim = fields.get("head_dim")
        return cls(
            num_layers=int(fields["num_hidden_layers"]),
            hidden_size=int(fields["hidden_size"]),
            intermediate_size=int(fields["intermediate_size"]),
            num_heads=heads,
            num_kv_heads=int(kv_heads) if kv_heads is not None else heads,
            head_dim=int(head_dim) if head_dim is not None else int(fields["hidden_size"]) // heads,
            vocab_size=int(fields["vocab_size"]),
        )


PRESETS: dict[str, LMShape] = {
    "llava-1.5-7b": LMShape(32, 4096, 11008, 32, 32, 128, 32000),
    "llava-1.5-13b": LMShape(40, 5120, 13824, 40, 40, 128, 32000),
    # LLaVA-1.6 (LLaVA-NeXT): llava-v1.6-vicuna-7b (Vicuna-7B, the 1.5-7b shape) and llava-v1.6-mistral-7b
    # (Mistral-7B-Instruct-v0.2: FFN 14336, 8 key/value heads)
    "llava-next-7b": LMShape(32, 4096, 11008, 32, 32, 128, 32000),
    "llava-next-mistral-7b": LMShape(32, 4096, 14336, 32, 8, 128, 32000),
}

# Presets that cut images into anyres crops: their grid pinpoints ([width, height]), for --image-size.
ANYRES_PRESETS: dict[str, tuple] = {"llava-next-7b": LLAVA_NEXT_PINPOINTS,
                                    "llava-next-mistral-7b": LLAVA_NEXT_PINPOINTS}


@dataclass(frozen=True)
class VisionShape:
    """A ViT vision tower plus LLaVA's MLP projector (``mlp2x_gelu`` = depth 2)."""

    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    image_size: int
    patch_size: int
    num_channels: int = 3
    projector_depth: int = 2

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


VISION_PRESETS: dict[str, VisionShape] = {
    # openai/clip-vit-large-patch14-336, the tower of both LLaVA-1.5 models.
    "clip-vit-l-14-336": VisionShape(24, 1024, 4096, 16, 336, 14),
}

# Paper Table 5 (LLaVA-1.5-7B, MME): FLOPs (%) and KV (MB) per method and average budget.
TABLE5: dict[str, dict[int, dict[str, float]]] = {
    "vanilla": {576: {"flops": 100.0, "kv_mb": 288.0}},
    "fastv": {192: {"flops": 45.3, "kv_mb": 96.3}, 128: {"flops": 35.7, "kv_mb": 64.2}},
    "cdpruner": {192: {"flops": 42.7, "kv_mb": 96.0}, 128: {"flops": 33.2, "kv_mb": 64.0}},
    "entropyprune": {192: {"flops": 42.3, "kv_mb": 95.8}, 128: {"flops": 32.7, "kv_mb": 63.9}},
}


def resolve_shape(spec: str | os.PathLike | Mapping[str, Any] | LMShape) -> LMShape:
    """A preset name (``llava-1.5-7b``), a config.json path or folder, a config dict, or an LMShape."""
    if isinstance(spec, LMShape):
        return spec
    if isinstance(spec, str) and spec in PRESETS:
        return PRESETS[spec]
    if isinstance(spec, (str, os.PathLike)) and not os.path.exists(os.fspath(spec)):
        raise FileNotFoundError(
            f"{os.fspath(spec)}: not a preset ({', '.join(PRESETS)}) and no such config.json or folder"
        )
    return LMShape.from_config(spec)


def anyres_pinpoints(spec: str | os.PathLike | Mapping[str, Any]) -> list[tuple[int, int]] | None:
    """The grid pinpoints ([width, height]) of an anyres (LLaVA-1.6) preset or config.json (path, folder or
    dict), or None for a model that gives every image one view (LLaVA-1.5)."""
    if isinstance(spec, str) and spec in PRESETS:
        points = ANYRES_PRESETS.get(spec)
        return None if points is None else [tuple(p) for p in points]
    if isinstance(spec, Mapping):
        return pinpoints_from_config(spec)
    path = os.fspath(spec)
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    with open(path, encoding="utf-8") as fh:
        return pinpoints_from_config(json.load(fh))


def resolve_keep(
    num_layers: int,
    layer: int,
    num_visual: int,
    keep: int | None = None,
    avg_tokens: float | None = None,
    ratio: float | None = None,
    flags: Mapping[str, str] | None = None,
) -> int:
    """Visual tokens kept per image after ``layer`` for exactly one of keep / avg_tokens / ratio.

    :func:`entropyprune.budget.keep_for_budget`, the rule ``PruneConfig.resolve`` uses: ``keep=N`` -> N;
    ``avg_tokens=T`` -> ``floor((L*T - K*V) / (L-K))``; ``ratio=r`` -> ``round(r*V)`` with halves rounded
    up; N in [1, V]. ``layer`` may be 0 (methods that prune before the language model). ``flags`` names
    the parameters in error messages (the CLI passes its own flags).
    """
    return budget.keep_for_budget(
        num_layers, layer, num_visual, keep=keep, avg_tokens=avg_tokens, ratio=ratio, flags=flags
    )


def average_tokens(num_layers: int, layer: int, num_visual: int, keep: int) -> float:
    """The average-over-layers visual token count of keeping ``keep`` after ``layer``."""
    return float(budget.avg_tokens_equivalent(keep, num_layers, layer, num_visual))


def _attention_pairs(n: int, n_ctx: int, attention: str) -> int:
    if attention == "full":
        return n * n_ctx
    if attention == "causal":
        return n * (n_ctx - n) + n * (n + 1) // 2
    raise ValueError(f"attention must be 'full' or 'causal', got {attention!r}")


def layer_flops(
    n_tokens: int, shape: LMShape, n_ctx: int | None = None, attention: str = "full"
) -> dict[str, int]:
    """FLOPs of one decoder layer for ``n_tokens`` new tokens attending to ``n_ctx`` keys, by term.

    ``n_ctx`` (default ``n_tokens``) counts the keys including the new tokens themselves, e.g. one
    decoding step over a cache of c tokens is ``layer_flops(1, shape, n_ctx=c + 1)``.
    """
    n = int(n_tokens)
    ctx = n if n_ctx is None else int(n_ctx)
    if n < 0 or ctx < n:
        raise ValueError(f"need 0 <= n_tokens <= n_ctx, got n_tokens={n}, n_ctx={ctx}")
    d, m = shape.hidden_size, shape.intermediate_size
    q_width = shape.num_heads * shape.head_dim
    kv_width = shape.num_kv_heads * shape.head_dim
    pairs = _attention_pairs(n, ctx, attention) if n else 0
    terms = {
        "q_proj": 2 * n * d * q_width,
        "k_proj": 2 * n * d * kv_width,
        "v_proj": 2 * n * d * kv_width,
        "o_proj": 2 * n * q_width * d,
        "attn_qk": 2 * q_width * pairs,
        "attn_av": 2 * q_width * pairs,
        "ffn": 2 * 3 * n * d * m,
    }
    terms["total"] = sum(terms.values())
    return terms


def paper_layer_flops(n: int, shape: LMShape) -> int:
    """The paper's Eq. 15: ``F(n) = 4 n^2 d + 8 n d^2 + 6 n m d`` (MHA, full attention)."""
    d, m = shape.hidden_size, shape.intermediate_size
    return 4 * n * n * d + 8 * n * d * d + 6 * n * m * d


def vision_flops(vision: VisionShape, lm_hidden: int, n_images: int = 1) -> dict[str, int]:
    """FLOPs of the vision tower (patch embedding + all encoder layers, CLS token included) and of the
    MLP projector (first layer ``hidden -> lm_hidden``, then ``depth - 1`` layers ``lm_hidden -> lm_hidden``)
    for ``n_images`` images; full (bidirectional) attention."""
    p = vision.num_patches
    n = p + 1
    dv, mv = vision.hidden_size, vision.intermediate_size
    patch = 2 * p * vision.num_channels * vision.patch_size**2 * dv
    per_layer = 8 * n * dv * dv + 4 * n * n * dv + 4 * n * dv * mv
    tower = patch + vision.num_layers * per_layer
    projector = 2 * p * (dv * lm_hidden + (vision.projector_depth - 1) * lm_hidden * lm_hidden)
    return {
        "tower": tower * n_images,
        "projector": projector * n_images,
        "total": (tower + projector) * n_images,
    }


def _count(
    shape: LMShape,
    tokens: list[int],
    decode_steps: int,
    include_lm_head: bool,
    attention: str,
) -> dict[str, Any]:
    d, vocab = shape.hidden_size, shape.vocab_size
    per_layer = []
    terms: dict[str, int] = {}
    prefill = decode = 0
    for idx, n in enumerate(tokens):
        pre = layer_flops(n, shape, attention=attention)
        dec = 0
        for step in range(decode_steps):
            one = layer_flops(1, shape, n_ctx=n + step + 1, attention=attention)
            dec += one["total"]
            for key, value in one.items():
                if key != "total":
                    terms[key] = terms.get(key, 0) + value
        for key, value in pre.items():
            if key != "total":
                terms[key] = terms.get(key, 0) + value
        prefill += pre["total"]
        decode += dec
        per_layer.append(
            {"layer": idx, "tokens": n, "prefill": pre["total"], "decode": dec, "kv_tokens": n + decode_steps}
        )
    head_prefill = 2 * tokens[-1] * d * vocab if include_lm_head else 0
    head_decode = 2 * decode_steps * d * vocab if include_lm_head else 0
    return {
        "prefill": prefill,
        "decode": decode,
        "lm_head_prefill": head_prefill,
        "lm_head_decode": head_decode,
        "terms": terms,
        "per_layer": per_layer,
    }


def prefill_flops(
    shape: LMShape,
    n_text: int,
    n_visual: int = 576,
    n_images: int = 1,
    layer: int = 2,
    keep: int | None = None,
    decode_steps: int = 0,
    include_lm_head: bool = False,
    attention: str = "full",
    vision: VisionShape | str | None = None,
    visual_per_layer: list[int] | None = None,
    views_per_image: int = 1,
) -> dict[str, Any]:
    """FLOPs of a prefill (plus ``decode_steps`` greedy steps) with ``keep`` visual tokens per image
    surviving layer ``layer``; ``keep=None`` is the unpruned model. ``visual_per_layer`` (L counts per
    image) replaces ``layer``/``keep`` for multi-stage schedules (:func:`stage_tokens`), counted exactly.

    Returns a dict with the pruned counts (``prefill``, ``decode``, ``lm_head``, ``vision``, ``total``,
    ``terms`` summed over layers and steps, ``per_layer`` rows ``{layer, tokens, prefill, decode,
    kv_tokens}``, ``tokens_per_layer``), the same totals for the unpruned model under ``baseline``, and
    ``fraction`` = total / unpruned total (what Table 5 reports as FLOPs %). ``views_per_image``: tower
    inputs per image for the ``vision`` count (LLaVA-1.6: the base view plus its crops).
    """
    L = shape.num_layers
    for name, value in (
        ("n_text", n_text),
        ("n_visual", n_visual),
        ("n_images", n_images),
        ("decode_steps", decode_steps),
    ):
        if int(value) != value or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if not 0 <= layer <= L - 1:
        raise BudgetError("layer", layer, f"layer must be in [0, {L - 1}] for a {L}-layer model, got {layer!r}")
    kept = n_visual if keep is None else int(keep)
    if not 0 <= kept <= n_visual:
        problem = f"is more than the {n_visual} visual tokens" if kept > 0 else "is negative"
        raise BudgetError("keep", keep, f"keep={keep} {problem}")
    if n_text + n_images * n_visual == 0:
        raise ValueError("the prompt is empty: n_text and n_images * n_visual are both 0")
    if isinstance(vision, str):
        if vision not in VISION_PRESETS:
            raise ValueError(f"unknown vision preset {vision!r}; known: {', '.join(VISION_PRESETS)}")
        vision = VISION_PRESETS[vision]

    full_tokens = [n_text + n_images * n_visual] * L
    if visual_per_layer is not None:
        if len(visual_per_layer) != L or any(not 0 <= n <= n_visual for n in visual_per_layer):
            raise ValueError(f"visual_per_layer must hold {L} counts in [0, {n_visual}], got {visual_per_layer}")
        tokens = [n_text + n_images * n for n in visual_per_layer]
        kept = visual_per_layer[-1]
    else:
        tokens = [n_text + n_images * (n_visual if i < layer else kept) for i in range(L)]
    if int(views_per_image) != views_per_image or views_per_image < 1:
        raise ValueError(f"views_per_image must be a positive integer, got {views_per_image!r}")
    vis = (vision_flops(vision, shape.hidden_size, n_images * views_per_image)["total"]
           if vision is not None and n_images else 0)

    def summary(counts: dict[str, Any]) -> dict[str, Any]:
        lm_head = counts["lm_head_prefill"] + counts["lm_head_decode"]
        total = counts["prefill"] + counts["decode"] + lm_head + vis
        return {
            "prefill": counts["prefill"],
            "decode": counts["decode"],
            "lm_head": lm_head,
            "vision": vis,
            "total": total,
        }

    pruned = _count(shape, tokens, decode_steps, include_lm_head, attention)
    base = _count(shape, full_tokens, decode_steps, include_lm_head, attention)
    out = summary(pruned)
    baseline = summary(base)
    out.update(
        {
            "terms": pruned["terms"],
            "per_layer": pruned["per_layer"],
            "tokens_per_layer": tokens,
            "keep": kept,
            "avg_visual_tokens": (sum(visual_per_layer) / L if visual_per_layer is not None
                                  else average_tokens(L, layer, n_visual, kept)),
            "baseline": baseline,
            "fraction": out["total"] / baseline["total"],
        }
    )
    return out


def simplified_ratio(L: int, K: int, r: float) -> float:
    """The paper's approximate FLOPs *reduction* ``R ~ (L-K)/L * r`` (r = removed fraction of tokens)."""
    return (L - K) / L * r


def eq16_reduction(shape: LMShape, n: int, n_hat: int, K: int) -> float:
    """The paper's exact Eq. 16: ``R = 1 - (K F(n) + (L-K) F(n_hat)) / (L F(n))`` with Eq. 15's F."""
    L = shape.num_layers
    full = paper_layer_flops(n, shape)
    return 1 - (K * full + (L - K) * paper_layer_flops(n_hat, shape)) / (L * full)


def stage_tokens(stages, num_layers: int, num_visual: int) -> list[int]:
    """Visual tokens per image that each of the L layers sees under a schedule of stages
    (``Stage(layer, keep, merged)``, as :meth:`entropyprune.config.PruneConfig.schedule` gives)."""
    out, tokens, stages = [], num_visual, sorted(stages, key=lambda st: st.layer)
    for i in range(num_layers):
        for st in stages:
            if st.layer == i:
                tokens = st.keep + st.merged
        out.append(tokens)
    return out


def kv_cache_bytes(shape: LMShape, tokens_per_layer: list[int], bytes_per_elem: int = 2) -> int:
    """Bytes of a K/V cache holding ``tokens_per_layer[l]`` tokens in layer l:
    ``sum_l 2 * tokens_l * num_kv_heads * head_dim * bytes_per_elem``."""
    if len(tokens_per_layer) != shape.num_layers:
        raise ValueError(
            f"tokens_per_layer has {len(tokens_per_layer)} entries for {shape.num_layers} layers"
        )
    width = shape.num_kv_heads * shape.head_dim
    return sum(2 * int(t) * width * bytes_per_elem for t in tokens_per_layer)
