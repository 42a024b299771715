"""Measured FLOPs: the real model's prefill run under ``torch.utils.flop_counter.FlopCounterMode``.

The analytic count in :mod:`entropyprune.flops` is a formula; this module checks it against what the
model actually executes. The whole ``LlavaLlamaForCausalLM`` is built on the ``meta`` device at full
size (LLaVA-1.5-7B: 32 layers, d = 4096), so no weight is allocated and the count takes seconds on any
machine. A prompt of ``n_text`` text tokens around ``n_images`` images of ``n_visual`` tokens each is fed
as ``inputs_embeds`` + ``position_ids`` straight into ``LlamaModel.forward`` with the real
:class:`entropyprune.hook.PruneHook`, so layers ``>= K`` run on exactly the tokens the method keeps.

What FlopCounterMode sees
=========================

It counts matrix products only (``mm``, ``addmm``, ``bmm``, convolutions and the fused
scaled-dot-product-attention kernels it has formulas for), 2 FLOPs per multiply-add, attributed to the
module that ran them. Element-wise work (RoPE, softmax, SwiGLU, RMSNorm, residuals) is invisible to it
and to the analytic count alike.

Attention depends on the device, which is one more reason to count on meta (checked with torch 2.13):

- meta: ``F.scaled_dot_product_attention`` takes the math path, two ``bmm`` over the dense
  ``n x n_ctx`` block: the analytic ``attention="full"`` convention.
- CUDA: the flash / memory-efficient / cuDNN kernels are registered with dense formulas (``is_causal``
  is ignored), so also ``"full"``.
- CPU: ``aten::_scaled_dot_product_flash_attention_for_cpu`` has no formula and counts **0**; a CPU
  profile under FlopCounterMode silently drops the attention matmuls (0.2 of 8.5 TFLOPs for an
  unpruned 7B prefill). ``attn_implementation="eager"`` is counted on every device (plain matmuls).

Per decoder layer the module names give the terms directly: ``self_attn.{q,k,v,o}_proj`` ->
``q_proj`` ...; ``self_attn`` minus its four projections -> ``attn_qk + attn_av``; ``mlp`` -> ``ffn``.
FLOPs outside every layer are the pruning method's own work (for EntropyPrune the h x h Gram products
of the 576 image tokens, ~0.15 GFLOPs; the eigen-solve is not a matmul and is not counted), reported
as ``hook``.

The selection method runs on meta tensors too: ``torch.linalg.eigvalsh`` has a meta kernel in torch
>= 2.1, so EntropyPrune itself is used. Which tokens are kept does not change any count (only how
many), so when a method cannot run on meta (a kernel without a meta implementation) the count falls
back to ``method="random"`` and says so in ``method_used``.

The module imports the model lazily: ``entropyprune`` otherwise depends on torch only.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from entropyprune import flops as F

__all__ = ["MEASURED_TERMS", "measured_flops", "compare", "format_comparison"]

# The analytic terms FlopCounterMode can attribute one by one; attention is reported as one sum because
# both of its matmuls run inside the same module (and inside one fused kernel on a GPU).
MEASURED_TERMS = ("q_proj", "k_proj", "v_proj", "o_proj", "attention", "ffn")

_LAYER_MODULE = re.compile(r"(?:^|\.)layers\.(\d+)\.(self_attn(?:\.([qkvo])_proj)?|mlp)$")


def _llava_config(shape: F.LMShape, vision: F.VisionShape | None):
    from llava.model.language_model.configuration_llava import LlavaConfig

    extra: dict[str, Any] = {}
    if vision is not None:
        extra = dict(
            mm_vision_tower="clip-vit-l-14-336 (meta)",
            mm_hidden_size=vision.hidden_size,
            mm_projector_type=f"mlp{vision.projector_depth}x_gelu",
            vision_config=dict(
                hidden_size=vision.hidden_size,
                intermediate_size=vision.intermediate_size,
                num_hidden_layers=vision.num_layers,
                num_attention_heads=vision.num_heads,
                image_size=vision.image_size,
                patch_size=vision.patch_size,
                num_channels=vision.num_channels,
                hidden_act="quick_gelu",
            ),
        )
    return LlavaConfig(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        head_dim=shape.head_dim,
        **extra,
    )


def _counts_by_module(counter) -> dict[str, int]:
    return {name: int(sum(ops.values())) for name, ops in counter.get_flop_counts().items()}


def _layer_terms(by_module: dict[str, int], num_layers: int) -> tuple[list[dict[str, int]], int]:
    """Per-layer measured terms and the FLOPs inside any decoder layer (to isolate the hook's)."""
    raw: list[dict[str, int]] = [{} for _ in range(num_layers)]
    for name, value in by_module.items():
        m = _LAYER_MODULE.search(name)
        if m is None:
            continue
        key = f"{m.group(3)}_proj" if m.group(3) else m.group(2)
        raw[int(m.group(1))][key] = value
    rows = []
    for r in raw:
        proj = sum(r.get(f"{p}_proj", 0) for p in "qkvo")
        rows.append(
            {
                "q_proj": r.get("q_proj", 0),
                "k_proj": r.get("k_proj", 0),
                "v_proj": r.get("v_proj", 0),
                "o_proj": r.get("o_proj", 0),
                "attention": r.get("self_attn", 0) - proj,
                "ffn": r.get("mlp", 0),
            }
        )
    inside = 0
    for name, value in by_module.items():
        if re.search(r"(?:^|\.)layers\.\d+$", name):
            inside += value
    return rows, inside


def measured_flops(
    shape: F.LMShape | str = "llava-1.5-7b",
    n_text: int = 62,
    n_visual: int = 576,
    n_images: int = 1,
    layer: int = 2,
    keep: int | None = None,
    decode_steps: int = 0,
    include_lm_head: bool = False,
    vision: F.VisionShape | str | None = None,
    method: str = "entropy",
    image_start: int = 35,
) -> dict[str, Any]:
    """Count one prefill (and ``decode_steps`` cached greedy steps) of the real model on the meta device.

    Arguments mean what they mean in :func:`entropyprune.flops.prefill_flops`; ``keep=None`` runs the
    model without a pruning hook. The images sit back to back after the first ``image_start`` text
    tokens (35: LLaVA-1.5's system prompt), which changes no count. Returns ``prefill``, ``decode``,
    ``lm_head``, ``vision``, ``hook`` (the method's own matmuls), ``total``, ``terms`` (summed over
    layers, keys ``MEASURED_TERMS``), ``per_layer`` (terms and ``tokens`` per layer),
    ``tokens_per_layer`` (read from the KV cache) and ``method_used``.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from entropyprune.config import PruneConfig
    from entropyprune.hook import PruneHook
    from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM
    from llava.model.language_model.modeling_llama import KVCache
    from llava.model.llava_arch import Splice

    shape = F.resolve_shape(shape)
    if isinstance(vision, str):
        if vision not in F.VISION_PRESETS:
            raise ValueError(f"unknown vision preset {vision!r}; known: {', '.join(F.VISION_PRESETS)}")
        vision = F.VISION_PRESETS[vision]
    if n_text < 0 or n_images < 0 or n_visual < 0 or decode_steps < 0:
        raise ValueError("n_text, n_images, n_visual and decode_steps must be >= 0")
    total_len = n_text + n_images * n_visual
    if total_len == 0:
        raise ValueError("the prompt is empty: n_text and n_images * n_visual are both 0")
    if vision is not None and n_visual != vision.num_patches:
        raise ValueError(f"n_visual={n_visual} but the vision tower yields {vision.num_patches} tokens per image")
    start = min(image_start, n_text)
    spans = [(start + i * n_visual, n_visual) for i in range(n_images)] if n_visual else []

    with torch.device("meta"):
        model = LlavaLlamaForCausalLM(_llava_config(shape, vision))
        x = torch.empty(1, total_len, shape.hidden_size)
        pos = torch.arange(total_len)[None]
    lm = model.get_model()

    vision_count = 0
    if vision is not None and n_images:
        pixels = torch.empty(n_images, vision.num_channels, vision.image_size, vision.image_size, device="meta")
        with FlopCounterMode(display=False) as counter:
            model.encode_images(pixels)
        vision_count = int(counter.get_total_flops())

    def run(method_name: str) -> tuple[dict[str, int], int, list[int], int, int]:
        hook = None
        if keep is not None and spans:
            cfg = PruneConfig(method=method_name, layer=layer, keep=keep)
            splice = Splice(x, torch.ones(1, total_len, dtype=torch.bool, device=x.device), pos, None, [spans],
                            [total_len], "left")
            hook = PruneHook(cfg, splice, model.config)
        cache = KVCache(shape.num_layers, extra=decode_steps)
        with FlopCounterMode(display=False) as counter:
            hidden, _ = lm(x, pos, None, cache, hook)
        by_module = _counts_by_module(counter)
        prefill_total = int(counter.get_total_flops())
        lengths = cache.layer_lengths()
        head = 0
        if include_lm_head:
            with FlopCounterMode(display=False) as c_head:
                model.lm_head(hidden)
            head += int(c_head.get_total_flops())
        decode = 0
        if decode_steps:
            token = torch.empty(1, 1, shape.hidden_size, device="meta")
            with FlopCounterMode(display=False) as c_dec:
                for _ in range(decode_steps):
                    step, _ = lm(token, cache.next_position[:, None], None, cache)
            decode = int(c_dec.get_total_flops())
            if include_lm_head:
                with FlopCounterMode(display=False) as c_head:
                    for _ in range(decode_steps):
                        model.lm_head(step[:, -1])
                head += int(c_head.get_total_flops())
        return by_module, prefill_total, lengths, decode, head

    method_used = method
    try:
        by_module, prefill_total, lengths, decode, head = run(method)
    except (NotImplementedError, RuntimeError) as exc:
        if "meta" not in str(exc).lower() or method == "random":
            raise
        # Only the number of kept tokens matters to the count; a method-agnostic rule gives the same layout.
        method_used = "random"
        by_module, prefill_total, lengths, decode, head = run("random")

    per_layer, inside = _layer_terms(by_module, shape.num_layers)
    for row, n in zip(per_layer, lengths, strict=True):
        row["tokens"] = n
    terms = {t: sum(r[t] for r in per_layer) for t in MEASURED_TERMS}
    hook_flops = prefill_total - inside
    return {
        "prefill": inside,
        "decode": decode,
        "lm_head": head,
        "vision": vision_count,
        "hook": hook_flops,
        "total": inside + decode + head + vision_count + hook_flops,
        "terms": terms,
        "per_layer": per_layer,
        "tokens_per_layer": lengths,
        "method_used": method_used if keep is not None and spans else None,
    }


def compare(
    shape: F.LMShape | str = "llava-1.5-7b",
    n_text: int = 62,
    n_visual: int = 576,
    n_images: int = 1,
    layer: int = 2,
    keep: int | None = None,
    decode_steps: int = 0,
    include_lm_head: bool = False,
    vision: F.VisionShape | str | None = None,
    method: str = "entropy",
) -> dict[str, Any]:
    """Measured against analytic (``attention="full"``) for the same prompt, term by term.

    ``rows`` lists, per term and per part (prefill, decode, LM head, vision), the analytic count, the
    measured count and the relative difference ``measured / analytic - 1``; ``max_rel_diff`` is the
    largest over the rows both cover (the hook's FLOPs have no analytic counterpart and are listed apart).
    ``fraction`` is the measured total over the measured unpruned total (the hook excluded, as in the
    analytic FLOPs %), next to the analytic ``fraction``.
    """
    shape = F.resolve_shape(shape)
    kw = dict(n_text=n_text, n_visual=n_visual, n_images=n_images, layer=layer, decode_steps=decode_steps,
              include_lm_head=include_lm_head, vision=vision)
    ana = F.prefill_flops(shape, keep=keep, attention="full", **kw)
    mea = measured_flops(shape, keep=keep, method=method, **kw)
    base = mea if keep is None else measured_flops(shape, keep=None, **kw)
    # The analytic terms sum prefill and decode; split them again with a decode-free analytic count.
    ana_pre = F.prefill_flops(shape, keep=keep, attention="full", **{**kw, "decode_steps": 0})["terms"]
    rows = []
    for term in MEASURED_TERMS:
        if term == "attention":
            a = ana_pre["attn_qk"] + ana_pre["attn_av"]
        else:
            a = ana_pre[term]
        rows.append(_row(f"prefill {term}", a, mea["terms"][term]))
    rows.append(_row("prefill (decoder layers)", _terms_total(ana_pre), mea["prefill"]))
    if decode_steps:
        rows.append(_row(f"decode ({decode_steps} steps)", ana["decode"], mea["decode"]))
    if include_lm_head:
        rows.append(_row("LM head", ana["lm_head"], mea["lm_head"]))
    if vision is not None:
        rows.append(_row("vision tower + projector", ana["vision"], mea["vision"]))
    counted = mea["total"] - mea["hook"]
    base_counted = base["total"] - base["hook"]
    rows.append(_row("total (hook excluded)", ana["total"], counted))
    return {
        "shape": shape,
        "keep": ana["keep"],
        "tokens_per_layer": mea["tokens_per_layer"],
        "analytic_tokens_per_layer": ana["tokens_per_layer"],
        "rows": rows,
        "max_rel_diff": max(abs(r["rel_diff"]) for r in rows),
        "hook": mea["hook"],
        "method_used": mea["method_used"],
        "fraction": counted / base_counted,
        "analytic_fraction": ana["fraction"],
        "measured": mea,
        "analytic": ana,
    }


def _terms_total(terms: dict[str, int]) -> int:
    return sum(v for k, v in terms.items() if k != "total")


def _row(part: str, analytic: int, measured: int) -> dict[str, Any]:
    if analytic == 0:
        rel = 0.0 if measured == 0 else float("inf")
    else:
        rel = measured / analytic - 1
    return {"part": part, "analytic": int(analytic), "measured": int(measured), "rel_diff": rel}


def format_comparison(cmp: dict[str, Any]) -> str:
    """A plain-text table of :func:`compare`'s rows (TFLOPs), for the command line."""
    lines = [f"{'part':<30}{'analytic TFLOPs':>17}{'measured TFLOPs':>17}{'diff':>10}"]
    for r in cmp["rows"]:
        lines.append(
            f"{r['part']:<30}{r['analytic'] / 1e12:>17.4f}{r['measured'] / 1e12:>17.4f}{100 * r['rel_diff']:>9.3f}%"
        )
    if cmp["method_used"] is not None:
        lines.append(
            f"{'pruning method (' + cmp['method_used'] + ')':<30}{'-':>17}{cmp['hook'] / 1e12:>17.4f}"
            f"{'':>10}  (its own matmuls; no analytic term)"
        )
    lines.append(
        f"FLOPs: analytic {100 * cmp['analytic_fraction']:.2f}%, measured {100 * cmp['fraction']:.2f}% "
        f"(largest term difference {100 * cmp['max_rel_diff']:.3f}%)"
    )
    return "\n".join(lines)
