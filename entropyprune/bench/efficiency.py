"""Measured efficiency of pruning, shaped like the paper's Table 5: vanilla LLaVA against each method.

    python -m entropyprune.bench.efficiency --arch llava-1.5-7b-cpu [--layers 6] [--budgets 192,128,64]
        [--methods entropy,random] [--repeats 5] [--new-tokens 4] [--json FILE]
    python -m entropyprune.bench.efficiency --model-path liuhaotian/llava-v1.5-7b \\
        [--questions playground/data/eval/MME/llava_mme.jsonl --num-questions 20 --image-folder DIR]

Per row (vanilla, then each method at each average budget):

- ``prefill_s``: from the prompt ids to the first generated token on the host: vision tower and projector
  (when the model has one), splice, building the pruning hook, the language model's prefill with the
  pruning inside it, the LM head on the last position and the greedy pick. This is what
  ``LlavaLlamaForCausalLM.generate`` runs before its first token, driven here step by step so that the
  KV cache can be read.
- ``latency_s``: the same plus ``--new-tokens - 1`` cached greedy decode steps, i.e. the end-to-end time of
  ``--new-tokens`` new tokens. EOS does not stop the loop, so every row decodes the same number of steps.
- ``kv_bytes``: ``KVCache.nbytes()`` right after the prefill, asserted equal to
  ``2 * sum(layer_lengths) * kv_heads * head_dim * bytes`` and the layer lengths asserted equal to the
  token counts the pruning contract gives (text + kept tokens from layer K on). ``kv_visual_bytes`` counts
  the visual tokens only, which is what the paper's KV column reports (288.0 MB for vanilla 7B).
- ``peak_mem_bytes``: on CUDA ``torch.cuda.max_memory_allocated`` over the run (weights included). On the
  CPU tracemalloc does not see torch's allocations, so it is the process's peak resident set during the
  run (``VmHWM`` of /proc/self/status, reset before each run by writing 5 to /proc/self/clear_refs after
  ``malloc_trim``); it includes the weights and the Python runtime. ``peak_mem_kind`` names which.
  ``peak_mem_delta_bytes`` is the peak's rise over what was held when the run started (activations, KV
  cache, temporaries): the part pruning can change.
- ``flops_fraction``: :func:`entropyprune.flops.prefill_flops` with the run's real token counts (text
  tokens and kept tokens read from the splice and the prune trace), the decoder layers plus the vision
  tower when one runs: the work that ``prefill_s`` times. ``flops_bound_speedup = 1 / flops_fraction`` and
  ``speedup_vs_bound = (vanilla prefill / this prefill) / flops_bound_speedup``.
- ``select_s``: the pruning method's own call (for EntropyPrune: token entropy + top-N) on the states it
  was given inside the prefill, timed again on its own, same device, after the runs; ``score_s`` is the
  scorer alone (``token_entropy`` for EntropyPrune); ``select_share`` = ``select_s / prefill_s``.
  ``select_inline_s`` is the same call timed inside the prefill (CPU only: on CUDA it would need a sync).

Medians over ``--repeats`` after ``--warmup`` untimed rounds. Within a round every row runs once on every
prompt, and the order of the rows rotates from round to round, so slow drift (thermal, other processes)
hits all rows alike.

Models: a checkpoint (``--model-path``, with its tokenizer and CLIP tower; prompts from ``--questions``
in LLaVA's MME jsonl format or random text), or random weights of a named architecture (``--arch``):
``llava-1.5-7b`` (full size; needs ~14 GB in half precision), ``llava-1.5-7b-cpu`` (7B's widths, hidden
4096, FFN 11008, 32 heads of 128, with ``--layers`` decoder layers, default 6, so it runs in minutes on a
laptop CPU) and ``tiny`` (the test checkpoint's shapes). Without a vision tower the prompt gets random
"projected image features" at the image span; ``--with-vision`` adds a randomly initialised CLIP ViT-L/14
-336 tower and mlp2x_gelu projector (the tiny CLIP for ``tiny``), so the vision stage is timed too.

Budgets are the papers' average-token budgets over ``--budget-layers`` layers (default: the model's own
depth for a checkpoint, 32 for the ``--arch`` models), turned into a per-image keep count with the rule of
DESIGN.md. So ``llava-1.5-7b-cpu`` keeps 166 / 98 / 29 tokens after layer 2 for 192 / 128 / 64, exactly
what the 32-layer model keeps; its FLOPs fraction is that of its own, shallower stack.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from entropyprune import flops as F
from entropyprune.config import PruneConfig
from entropyprune.methods import available_methods, method_stage

ARCHS = ("llava-1.5-7b", "llava-1.5-7b-cpu", "tiny")
DEFAULT_CPU_LAYERS = 6
REQUIRED_KEYS = (
    "method", "avg_tokens", "keep", "flops_fraction", "prefill_s", "latency_s", "kv_bytes", "peak_mem_bytes",
    "device", "dtype", "arch",
)
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_CLIP_L_336 = dict(
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=336,
    patch_size=14, projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5, num_channels=3,
)
GIB, MIB = 2**30, 2**20


# ------------------------------------------------------------------------------------------------ the model


def _arch_config(arch: str, layers: int | None, with_vision: bool):
    from llava.model.language_model.configuration_llava import LlavaConfig

    if arch == "tiny":
        from llava.tools.make_tiny_checkpoint import TINY_VISION, tiny_text_config

        text = tiny_text_config(640)
        vision = dict(TINY_VISION)
    else:
        text = {}
        vision = dict(_CLIP_L_336)
    if arch == "llava-1.5-7b-cpu":
        text["num_hidden_layers"] = layers or DEFAULT_CPU_LAYERS
    elif layers is not None:
        text["num_hidden_layers"] = layers
    extra: dict[str, Any] = {}
    if with_vision:
        extra = dict(mm_vision_tower=f"random-{arch}-tower", mm_hidden_size=vision["hidden_size"],
                     mm_projector_type="mlp2x_gelu", vision_config=vision)
    return LlavaConfig(**text, **extra)


def _random_model(arch: str, layers: int | None, with_vision: bool, device: torch.device, dtype: torch.dtype,
                  seed: int):
    """Random weights of a named architecture, built on the meta device and filled in place.

    Building on meta and converting the dtype there means a 7B model never exists in float32 on the host.
    Weights are N(0, 1/fan_in) so activations stay O(1) through the stack (the timings do not depend on
    the values, but overflowing half-precision values would make the entropy scores meaningless).
    """
    from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM
    from llava.model.multimodal_encoder.builder import build_vision_tower

    config = _arch_config(arch, layers, with_vision)
    with torch.device("meta"):
        model = LlavaLlamaForCausalLM(config)
    model.to(dtype)
    model.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.zero_()
            elif p.dim() == 1:
                p.fill_(1.0)  # RMSNorm / LayerNorm gains
            elif name.endswith("embed_tokens.weight"):
                p.normal_(0.0, 1.0, generator=gen)
            else:
                p.normal_(0.0, p.shape[-1] ** -0.5, generator=gen)
    model.model.rotary_emb.reset_parameters(device)
    if with_vision:
        # Built off the meta device (transformers' own init), so CLIP's non-persistent buffers are real.
        torch.manual_seed(seed)
        tower = build_vision_tower(config).to(device=device, dtype=dtype)
        tower.is_loaded = True
        model.model.vision_tower = tower
    model.eval()
    model.requires_grad_(False)
    return model


def _vision_shape(model) -> F.VisionShape | None:
    tower = model.get_vision_tower()
    if tower is None:
        return None
    c = tower.config
    kind = model.config.mm_projector_type
    m = re.match(r"^mlp(\d+)x_gelu$", kind)
    depth = int(m.group(1)) if m else 1
    return F.VisionShape(c.num_hidden_layers, c.hidden_size, c.intermediate_size, c.num_attention_heads,
                         c.image_size, c.patch_size, getattr(c, "num_channels", 3), depth)


def _lm_shape(config) -> F.LMShape:
    return F.LMShape(config.num_hidden_layers, config.hidden_size, config.intermediate_size,
                     config.num_attention_heads, config.num_key_value_heads, config.head_dim, config.vocab_size)


# ---------------------------------------------------------------------------------------------- the prompts


@dataclass
class Prompt:
    """One benchmark input: ids with one IMAGE_TOKEN_INDEX marker and either pixels or stand-in features."""

    input_ids: torch.Tensor  # [1, T] on the host
    images: torch.Tensor | None = None  # [1, 3, H, W] on the device, for a model with a vision tower
    features: torch.Tensor | None = None  # [V, D] on the device: projected image features, without a tower
    source: str = "random"


def _random_prompts(model, n_text: int, count: int, device, dtype, seed: int) -> list[Prompt]:
    from llava.constants import IMAGE_TOKEN_INDEX

    g = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    tower = model.get_vision_tower()
    prompts = []
    for _ in range(count):
        ids = torch.randint(3, vocab, (n_text,), generator=g)
        ids[0] = model.config.bos_token_id
        cut = min(35, n_text)  # LLaVA-1.5's system prompt is 35 tokens long
        ids = torch.cat([ids[:cut], torch.tensor([IMAGE_TOKEN_INDEX]), ids[cut:]])[None]
        if tower is not None:
            side = tower.config.image_size
            pixels = torch.randn(1, 3, side, side, generator=g).to(device=device, dtype=dtype)
            prompts.append(Prompt(ids, images=pixels))
        else:
            feats = torch.randn(576, model.config.hidden_size, generator=g).to(device=device, dtype=dtype)
            prompts.append(Prompt(ids, features=feats))
    return prompts


def _question_prompts(path: str, count: int, tokenizer, image_processor, model, image_folder: str | None,
                      conv_mode: str, device, dtype, seed: int) -> list[Prompt]:
    """The first ``count`` records of a LLaVA question file (``text`` and ``image`` keys, e.g. llava_mme.jsonl)."""
    import numpy as np
    from PIL import Image

    from llava.conversation import conv_templates
    from llava.mm_utils import process_images, tokenizer_image_token

    if conv_mode not in conv_templates:
        known = ", ".join(conv_templates)
        raise SystemExit(f"--conv-mode {conv_mode!r} is not a known template; choose one of {known}")
    records = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SystemExit(f"{path}:{lineno}: not a JSON line ({exc})") from exc
            if "text" not in rec:
                raise SystemExit(f"{path}:{lineno}: no 'text' field (expected LLaVA's question-file format)")
            records.append(rec)
            if len(records) == count:
                break
    if not records:
        raise SystemExit(f"{path}: no questions")
    rng = np.random.default_rng(seed)
    prompts = []
    for rec in records:
        conv = conv_templates[conv_mode].copy()
        conv.append_message(conv.roles[0], "<image>\n" + rec["text"])
        conv.append_message(conv.roles[1], None)
        ids = tokenizer_image_token(conv.get_prompt(), tokenizer, return_tensors="pt")[None]
        image_path = os.path.join(image_folder, rec["image"]) if image_folder and rec.get("image") else None
        if image_path and os.path.isfile(image_path):
            image, source = Image.open(image_path).convert("RGB"), image_path
        else:
            image = Image.fromarray(rng.integers(0, 256, size=(336, 336, 3), dtype=np.uint8))
            source = f"{rec.get('question_id', '?')} (random image)"
        pixels = process_images([image], image_processor, model.config).to(device=device, dtype=dtype)
        prompts.append(Prompt(ids, images=pixels, source=source))
    return prompts


# -------------------------------------------------------------------------------------------------- one run


@dataclass
class Row:
    """One configuration of the table: vanilla (``prune`` None) or a method at a budget."""

    label: str
    method: str
    avg_tokens: float | None
    keep: int | None
    prune: PruneConfig | None
    prefill: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    peak: list[int] = field(default_factory=list)
    peak_delta: list[int] = field(default_factory=list)
    inline: list[float] = field(default_factory=list)
    per_prompt: dict[int, dict[str, Any]] = field(default_factory=dict)
    captured: Any = None  # the PruneInputs the method saw, for timing it on its own


class _TimedMethod:
    """Stands in for ``PruneHook.method``: records the inputs and (on CPU) the call's wall time."""

    def __init__(self, fn: Callable, row: Row, inline: bool):
        self.fn, self.row, self.inline = fn, row, inline

    def __call__(self, inputs, n_keep: int):
        if self.row.captured is None:
            self.row.captured = (inputs, n_keep)
        if not self.inline:
            return self.fn(inputs, n_keep)
        start = time.perf_counter()
        out = self.fn(inputs, n_keep)
        self.row.inline.append(time.perf_counter() - start)
        return out


class _Memory:
    """Peak memory of one run: CUDA's allocator statistics, or the process's resident-set high-water mark."""

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "cuda_max_memory_allocated"
        self._trim = None
        if device.type != "cuda":
            self.kind = "cpu_peak_rss"
            try:
                with open("/proc/self/clear_refs", "w") as fh:
                    fh.write("5")
            except OSError:
                # Without a resettable high-water mark only the process-lifetime peak is available.
                self.kind = "cpu_ru_maxrss_lifetime"
            try:
                self._trim = ctypes.CDLL("libc.so.6").malloc_trim
            except OSError:
                self._trim = None

    def reset(self) -> int:
        """Start a run's measurement; returns what is held now (the baseline for the run's increase)."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return int(torch.cuda.memory_allocated(self.device))
        if self._trim is not None:
            self._trim(0)  # hand freed heap pages back, so an earlier, larger run does not set this one's peak
        if self.kind == "cpu_peak_rss":
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            return self._status("VmRSS")
        return self.peak()

    @staticmethod
    def _status(key: str) -> int:
        with open("/proc/self/status") as fh:
            m = re.search(rf"{key}:\s+(\d+) kB", fh.read())
        return int(m.group(1)) * 1024 if m else 0

    def peak(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        if self.kind == "cpu_peak_rss":
            return self._status("VmHWM")
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _splice(model, prompt: Prompt):
    """The spliced prefill input, as ``generate`` builds it (left padding), with or without a vision tower."""
    from llava.constants import IMAGE_TOKEN_INDEX
    from llava.model.llava_arch import Splice

    if prompt.features is None:
        return model.splice_multimodal(prompt.input_ids, prompt.images, None, None, padding_side="left")
    ids = prompt.input_ids[0]
    at = int((ids == IMAGE_TOKEN_INDEX).nonzero()[0, 0])
    embed = model.get_model().embed_tokens
    text = embed(torch.cat([ids[:at], ids[at + 1:]]).to(embed.weight.device))
    x = torch.cat([text[:at], prompt.features, text[at:]])[None]
    t = x.shape[1]
    pos = torch.arange(t, device=x.device)[None]
    mask = torch.ones(1, t, dtype=torch.bool, device=x.device)
    return Splice(x, mask, pos, None, [[(at, prompt.features.shape[0])]], [t], "left")


def run_once(model, prompt: Prompt, row: Row, new_tokens: int, memory: _Memory) -> dict[str, Any]:
    """One prefill + ``new_tokens - 1`` greedy decode steps with the cache; times, cache and trace."""
    from llava.model.language_model.modeling_llama import KVCache

    device = model.device
    lm = model.get_model()
    model.set_prune(row.prune)
    base = memory.reset()
    _sync(device)
    t0 = time.perf_counter()
    splice = _splice(model, prompt)
    # The model's own hook builder, the one generate() calls: same trace, same checks.
    hook = model._prune_hook(splice)
    if hook is not None:
        hook.method = _TimedMethod(hook.method, row, inline=device.type == "cpu")
    cache = KVCache(len(lm.layers), extra=new_tokens)
    mask = splice.attention_mask if splice.has_padding else None
    hidden, _ = lm(splice.inputs_embeds, splice.position_ids, mask, cache, hook)
    token = model.lm_head(hidden[:, -1]).float().argmax(-1)
    _sync(device)
    t1 = time.perf_counter()
    # Python ints kept by the cache: reading them costs nothing and touches no device memory.
    lengths, kv = cache.layer_lengths(), cache.nbytes()
    elem = cache.keys[0].element_size()
    for _ in range(new_tokens - 1):
        hidden, _ = lm(lm.embed_tokens(token[:, None]), cache.next_position[:, None], None, cache)
        token = model.lm_head(hidden[:, -1]).float().argmax(-1)
    _sync(device)
    t2 = time.perf_counter()
    trace = lm.prune_trace
    spans = splice.image_spans[0]
    kept = [int(rec.kept.numel()) for rec in trace[0]] if trace and trace[0] else [v for _, v in spans]
    return {
        "t0": t0,
        "t1": t1,
        "prefill": t1 - t0,
        "latency": t2 - t0,
        "peak": memory.peak(),
        "peak_base": base,
        "kv": kv,
        "lengths": lengths,
        "elem": elem,
        "n_total": splice.lengths[0],
        "visual": [v for _, v in spans],
        "kept": kept,
    }


def _check_cache(res: dict[str, Any], config, layer: int | None, label: str) -> None:
    """The KV cache holds exactly the tokens the pruning contract says (target: it shrinks as kept tokens say)."""
    n_text = res["n_total"] - sum(res["visual"])
    L = config.num_hidden_layers
    full = n_text + sum(res["visual"])
    pruned = n_text + sum(res["kept"])
    expect = [full if layer is None or i < layer else pruned for i in range(L)]
    if res["lengths"] != expect:
        raise AssertionError(f"{label}: KV cache layer lengths {res['lengths']} != expected {expect}")
    width = config.num_key_value_heads * config.head_dim
    formula = 2 * sum(res["lengths"]) * width * res["elem"]
    if res["kv"] != formula:
        raise AssertionError(f"{label}: KVCache.nbytes() = {res['kv']} != 2*sum(lengths)*kv_heads*head_dim*bytes"
                             f" = {formula}")


def _median_time(fn: Callable[[], Any], repeats: int, device: torch.device) -> float:
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _time_selection(row: Row, repeats: int, device: torch.device) -> tuple[float | None, float | None]:
    """The method call and the scorer alone, on the states captured inside the prefill."""
    if row.captured is None or row.prune is None:
        return None, None
    from entropyprune.methods import get_method
    from entropyprune.score import token_entropy

    inputs, n_keep = row.captured
    method = get_method(row.prune.method)
    with torch.inference_mode():
        select = _median_time(lambda: method(inputs, n_keep), repeats, device)
        score = None
        if row.prune.method == "entropy":
            states = inputs.states
            score = _median_time(
                lambda: token_entropy(states, inputs.num_heads, variant=row.prune.variant, head_dim=states.shape[-1]),
                repeats, device)
    return select, score


# ------------------------------------------------------------------------------------------------ profiling


def profile_breakdown(model, prompt: Prompt, row: Row, memory: _Memory) -> dict[str, float]:
    """Wall time of one prefill split into: splice, layers before K, the pruning step, layers from K, rest.

    Forward hooks on the decoder layers read the clock; on the CPU every op is synchronous, so the splits
    are exact. On CUDA the split would need syncs and is not attempted.
    """
    lm = model.get_model()
    stamps: dict[tuple[int, str], float] = {}
    handles = []
    for i, layer in enumerate(lm.layers):
        handles.append(layer.register_forward_pre_hook(
            lambda _m, _a, i=i: stamps.__setitem__((i, "in"), time.perf_counter())))
        handles.append(layer.register_forward_hook(
            lambda _m, _a, _o, i=i: stamps.__setitem__((i, "out"), time.perf_counter())))
    try:
        with torch.inference_mode():
            res = run_once(model, prompt, row, 1, memory)
    finally:
        for h in handles:
            h.remove()
    L = len(lm.layers)
    k = row.prune.layer if row.prune is not None else None
    layers = [stamps[(i, "out")] - stamps[(i, "in")] for i in range(L)]
    between = [stamps[(i + 1, "in")] - stamps[(i, "out")] for i in range(L - 1)]
    out = {
        "prefill": res["prefill"],
        "before_first_layer": stamps[(0, "in")] - res["t0"],
        "layers": layers,
        "between_layers": between,
        "after_last_layer": res["t1"] - stamps[(L - 1, "out")],
    }
    if k is not None:
        out["prune_step"] = between[k - 1]
    return out


# ---------------------------------------------------------------------------------------------------- rows


def build_rows(methods: list[str], budgets: list[float], layer: int, budget_layers: int, variant: str,
               states: str, seed: int, num_visual: int = 576) -> list[Row]:
    rows = [Row("vanilla", "vanilla", None, None, None)]
    for method in methods:
        for avg in budgets:
            keep = PruneConfig(method=method, layer=layer, avg_tokens=avg).resolve(budget_layers, num_visual)
            cfg = PruneConfig(method=method, layer=layer, keep=keep, variant=variant, states=states, seed=seed)
            rows.append(Row(f"{method}@{avg:g}", method, avg, keep, cfg))
    return rows


def _summarise(rows: list[Row], model, vision: F.VisionShape | None, meta: dict[str, Any],
               select_repeats: int, device: torch.device, scores: dict[str, float]) -> list[dict[str, Any]]:
    shape = _lm_shape(model.config)
    config = model.config
    out = []
    vanilla_prefill = vanilla_latency = None
    for row in rows:
        per = list(row.per_prompt.values())
        fractions, totals, kv_vis = [], [], []
        width = config.num_key_value_heads * config.head_dim
        for res in per:
            n_text = res["n_total"] - sum(res["visual"])
            v = res["visual"][0]
            keep = res["kept"][0] if row.prune is not None else None
            counts = F.prefill_flops(shape, n_text=n_text, n_visual=v, n_images=len(res["visual"]),
                                     layer=row.prune.layer if row.prune is not None else 0, keep=keep,
                                     vision=vision)
            fractions.append(counts["fraction"])
            totals.append(counts["total"])
            kv_vis.append(2 * sum(n - n_text for n in res["lengths"]) * width * res["elem"])
        prefill = statistics.median(row.prefill)
        latency = statistics.median(row.latency)
        if row.prune is None:
            vanilla_prefill, vanilla_latency = prefill, latency
        frac = statistics.fmean(fractions)
        select_s, score_s = _time_selection(row, select_repeats, device)
        first = per[0]
        rec: dict[str, Any] = {
            "method": row.method,
            "label": row.label,
            "avg_tokens": row.avg_tokens if row.avg_tokens is not None else first["visual"][0],
            "keep": row.keep if row.keep is not None else first["visual"][0],
            "layer": row.prune.layer if row.prune is not None else None,
            "avg_tokens_this_model": (F.average_tokens(shape.num_layers, row.prune.layer, first["visual"][0],
                                                       row.keep) if row.prune is not None
                                      else first["visual"][0]),
            "text_tokens": first["n_total"] - sum(first["visual"]),
            "visual_tokens": first["visual"][0],
            "layer_lengths": first["lengths"],
            "flops": round(statistics.fmean(totals)),
            "flops_fraction": frac,
            "flops_bound_speedup": 1 / frac,
            "prefill_s": prefill,
            "latency_s": latency,
            "new_tokens": meta["new_tokens"],
            "prefill_min_s": min(row.prefill),
            "latency_min_s": min(row.latency),
            "prefill_samples_s": row.prefill,
            "latency_samples_s": row.latency,
            "kv_bytes": round(statistics.fmean(r["kv"] for r in per)),
            "kv_visual_bytes": round(statistics.fmean(kv_vis)),
            "kv_checked": True,
            "peak_mem_bytes": max(row.peak),
            "peak_mem_delta_bytes": max(row.peak_delta),
            "select_s": select_s,
            "score_s": score_s,
            "select_share": select_s / prefill if select_s is not None else None,
            "score_share": score_s / prefill if score_s is not None else None,
            "select_inline_s": statistics.median(row.inline) if row.inline else None,
            "score": scores.get(row.label),
            **meta,
        }
        out.append(rec)
    vanilla_min = out[0]["prefill_min_s"]
    for rec in out:
        rec["prefill_speedup_min"] = vanilla_min / rec["prefill_min_s"]
        rec["speedup_vs_bound_min"] = rec["prefill_speedup_min"] / rec["flops_bound_speedup"]
        rec["prefill_speedup"] = vanilla_prefill / rec["prefill_s"]
        rec["latency_speedup"] = vanilla_latency / rec["latency_s"]
        rec["speedup_vs_bound"] = rec["prefill_speedup"] / rec["flops_bound_speedup"]
    return out


def format_table(records: list[dict[str, Any]]) -> str:
    """Table 5's columns (Prefill, Lat., KV, Mem., FLOPs, Score) plus the speedup against the FLOPs bound."""
    r0 = records[0]
    mem = "Mem. (GB)" if r0["peak_mem_kind"].startswith("cuda") else "RSS (GB)"
    lines = [
        f"{r0['arch']}: {r0['layers']} layers, {r0['device']} ({r0['machine']}), {r0['dtype']}, "
        f"{r0['threads']} threads, torch {r0['torch']}; {r0['prompts']} prompt(s) ({r0['prompt_source']}), "
        f"{r0['text_tokens']} text + {r0['visual_tokens']} visual tokens; vision tower "
        f"{'timed' if r0['vision_tower'] else 'absent (random image features)'}; medians of {r0['repeats']} "
        f"repeats; latency = {r0['new_tokens']} new tokens; load average {r0['load_avg_before']} -> "
        f"{r0['load_avg_after']}",
        f"{'Method':<16}{'Tok.':>6}{'Keep':>6}{'Prefill (s)':>13}{'Lat. (s)':>10}{'KV (MiB)':>10}{'KVvis':>8}"
        f"{mem:>10}{'+Mem (MiB)':>11}{'FLOPs (%)':>11}{'Speedup':>9}{'Bound':>7}{'Sp/Bd':>7}{'Select':>9}{'Score':>8}",
    ]
    for r in records:
        sel = f"{100 * r['select_share']:.2f}%" if r["select_share"] is not None else "-"
        score = f"{r['score']:g}" if r["score"] is not None else "-"
        lines.append(
            f"{r['label']:<16}{r['avg_tokens']:>6g}{r['keep']:>6}{r['prefill_s']:>13.3f}{r['latency_s']:>10.3f}"
            f"{r['kv_bytes'] / MIB:>10.2f}{r['kv_visual_bytes'] / MIB:>8.2f}{r['peak_mem_bytes'] / GIB:>10.2f}"
            f"{r['peak_mem_delta_bytes'] / MIB:>11.1f}"
            f"{100 * r['flops_fraction']:>11.1f}{r['prefill_speedup']:>8.2f}x{r['flops_bound_speedup']:>6.2f}x"
            f"{100 * r['speedup_vs_bound']:>6.0f}%{sel:>9}{score:>8}"
        )
    lines.append("best of the repeats instead of the median (less sensitive to other load on the machine): "
                 + ", ".join(f"{r['label']} {r['prefill_speedup_min']:.2f}x = {100 * r['speedup_vs_bound_min']:.0f}% "
                             "of bound" for r in records[1:]))
    lines.append(
        "Tok. = average visual tokens (the budget); Keep = kept after layer K; KV = whole cache after prefill, "
        "KVvis = its visual tokens (Table 5's KV); Mem./RSS = peak of the run, weights included, +Mem = its rise "
        "over what was held before the run; FLOPs = decoder layers (+ vision tower when timed); Speedup = "
        "vanilla prefill / this prefill; Bound = 1 / FLOPs fraction; Select = pruning method's share of prefill"
    )
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------- driver


def _parse_list(text: str, kind: Callable[[str], Any], flag: str) -> list:
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"{flag} {text!r}: expected a comma-separated list") from None


def _parse_scores(items: list[str]) -> dict[str, float]:
    scores = {}
    for item in items:
        label, sep, value = item.partition("=")
        try:
            scores[label.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise SystemExit(f"--score {item!r}: expected LABEL=VALUE, e.g. vanilla=1862 or entropy@128=1780")
    return scores


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m entropyprune.bench.efficiency",
                                description="Measured prefill, latency, KV cache, memory and FLOPs of pruning "
                                            "(paper Table 5)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model-path", help="a LLaVA-1.5 checkpoint (folder or hub id)")
    src.add_argument("--arch", choices=ARCHS, help="random weights of this architecture (default: llava-1.5-7b-cpu "
                     "on the CPU, llava-1.5-7b on CUDA)")
    p.add_argument("--layers", type=int, help=f"decoder layers of --arch (llava-1.5-7b-cpu: {DEFAULT_CPU_LAYERS})")
    p.add_argument("--with-vision", action="store_true", help="--arch: add a random CLIP tower and projector")
    p.add_argument("--methods", default="entropy", help="comma-separated registered methods (default: entropy)")
    p.add_argument("--budgets", default="192,128,64", help="average visual-token budgets (default: 192,128,64)")
    p.add_argument("--layer", type=int, default=2, help="pruning layer K (default: 2)")
    p.add_argument("--budget-layers", type=int,
                   help="L in the average-budget rule (default: 32 for --arch, the model's depth for a checkpoint)")
    p.add_argument("--entropy-variant", default="official", choices=("official", "paper"))
    p.add_argument("--prune-states", default="query", choices=("query", "key"))
    p.add_argument("--prune-seed", type=int, default=0)
    p.add_argument("--text-tokens", type=int, default=62,
                   help="random-prompt mode: non-visual tokens (default 62, an MME prompt)")
    p.add_argument("--questions", help="a LLaVA question file (jsonl with 'text' and 'image'); needs --model-path")
    p.add_argument("--num-questions", type=int, default=1, help="first N questions / random prompts (default 1)")
    p.add_argument("--image-folder", help="images of --questions (a random image stands in for a missing one)")
    p.add_argument("--conv-mode", default="vicuna_v1")
    p.add_argument("--new-tokens", type=int, default=4, help="tokens generated for the latency (default 4)")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--dtype", default="auto", choices=("auto", *_DTYPES),
                   help="auto: float16 on CUDA, bfloat16 on the CPU (half precision, 2-byte KV as in Table 5)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0, help="random weights and prompts")
    p.add_argument("--score", action="append", default=[], metavar="LABEL=VALUE",
                   help="benchmark score to print for a row, e.g. vanilla=1862 entropy@128=1780 (repeatable)")
    p.add_argument("--profile", action="store_true",
                   help="also split one prefill per row into splice / layers before K / pruning step / later layers")
    p.add_argument("--json", metavar="FILE", help="write the rows as a JSON list")
    return p


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = build_parser().parse_args(argv)
    methods = _parse_list(args.methods, str, "--methods")
    budgets = _parse_list(args.budgets, float, "--budgets")
    for m in methods:
        if m not in available_methods():
            known = ", ".join(available_methods())
            raise SystemExit(f"--methods: {m!r} is not a registered method; choose from {known}")
        if method_stage(m) != "llm":
            raise SystemExit(f"--methods: {m!r} prunes before the language model; not wired into the model yet")
    if args.repeats < 1 or args.new_tokens < 1 or args.warmup < 0 or args.num_questions < 1:
        raise SystemExit("--repeats, --new-tokens and --num-questions must be >= 1, --warmup >= 0")
    if args.questions and not args.model_path:
        raise SystemExit("--questions needs --model-path: random weights come without a tokenizer "
                         "(use --text-tokens for random prompts)")
    if args.questions and not os.path.isfile(args.questions):
        raise SystemExit(f"--questions {args.questions}: no such file")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available; use --device cpu")
    dtype = _DTYPES.get(args.dtype) or (torch.float16 if device.type == "cuda" else torch.bfloat16)
    torch.manual_seed(args.seed)

    t_load = time.perf_counter()
    if args.model_path:
        from llava.model.builder import load_pretrained_model

        tokenizer, model, image_processor, _ = load_pretrained_model(args.model_path, device=str(device),
                                                                     torch_dtype=dtype)
        arch = os.path.basename(os.path.normpath(args.model_path))
        budget_layers = args.budget_layers or model.config.num_hidden_layers
    else:
        arch = args.arch or ("llava-1.5-7b" if device.type == "cuda" else "llava-1.5-7b-cpu")
        model = _random_model(arch, args.layers, args.with_vision, device, dtype, args.seed)
        tokenizer = image_processor = None
        budget_layers = args.budget_layers or 32
    load_s = time.perf_counter() - t_load
    L = model.config.num_hidden_layers
    if not 1 <= args.layer <= L - 1:
        raise SystemExit(f"--layer {args.layer}: must be in [1, {L - 1}] for this {L}-layer model")
    tower = model.get_vision_tower()
    num_visual = tower.num_patches if tower is not None else 576
    least = (args.layer * num_visual + budget_layers - args.layer) / budget_layers
    for avg in budgets:
        if not least <= avg <= num_visual:
            raise SystemExit(
                f"--budgets {avg:g}: with K={args.layer} over {budget_layers} layers an average budget must be in "
                f"[{least:g}, {num_visual}] to keep between 1 and {num_visual} visual tokens after layer K; "
                "--budget-layers 32 applies the 32-layer (LLaVA-1.5-7B) rule to a shallower model"
            )
    rows = build_rows(methods, budgets, args.layer, budget_layers, args.entropy_variant, args.prune_states,
                      args.prune_seed, num_visual)

    if args.questions:
        prompts = _question_prompts(args.questions, args.num_questions, tokenizer, image_processor, model,
                                    args.image_folder, args.conv_mode, device, dtype, args.seed)
        prompt_source = f"{args.questions} (first {len(prompts)})"
    else:
        if args.text_tokens < 1:
            raise SystemExit("--text-tokens must be >= 1")
        prompts = _random_prompts(model, args.text_tokens, args.num_questions, device, dtype, args.seed)
        prompt_source = "random text"

    memory = _Memory(device)
    load_before = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    print(f"# model ready in {load_s:.1f} s; {len(rows)} rows x {len(prompts)} prompt(s) x "
          f"({args.warmup} warm-up + {args.repeats} timed) rounds", file=sys.stderr, flush=True)
    with torch.inference_mode():
        for rnd in range(args.warmup + args.repeats):
            timed = rnd >= args.warmup
            shift = rnd % len(rows)
            order = rows[shift:] + rows[:shift]
            t_round = time.perf_counter()
            for p_idx, prompt in enumerate(prompts):
                for row in order:
                    res = run_once(model, prompt, row, args.new_tokens, memory)
                    _check_cache(res, model.config, row.prune.layer if row.prune else None, row.label)
                    row.per_prompt[p_idx] = res
                    if timed:
                        row.prefill.append(res["prefill"])
                        row.latency.append(res["latency"])
                        row.peak.append(res["peak"])
                        row.peak_delta.append(res["peak"] - res["peak_base"])
                    elif row.inline:
                        row.inline.clear()  # warm-up calls pay one-off costs (thread pool start-up)
            kind = "timed" if timed else "warm-up"
            print(f"# round {rnd + 1} ({kind}) {time.perf_counter() - t_round:.1f} s", file=sys.stderr, flush=True)
    model.set_prune(None)
    # Means over the prompts of a round, then medians over rounds: each round is one pass over the data.
    for row in rows:
        n = len(prompts)
        row.prefill = [statistics.fmean(row.prefill[i:i + n]) for i in range(0, len(row.prefill), n)]
        row.latency = [statistics.fmean(row.latency[i:i + n]) for i in range(0, len(row.latency), n)]

    cpu = platform.processor() or platform.machine()
    if device.type == "cpu" and os.path.isfile("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as fh:
            m = re.search(r"model name\s*:\s*(.+)", fh.read())
        cpu = m.group(1).strip() if m else cpu
    meta = {
        "device": str(device),
        "machine": torch.cuda.get_device_name(device) if device.type == "cuda" else f"{cpu}, {os.cpu_count()} cores",
        "dtype": str(dtype).replace("torch.", ""),
        "arch": arch,
        "layers": L,
        "budget_layers": budget_layers,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "prompts": len(prompts),
        "prompt_source": prompt_source,
        "vision_tower": model.get_vision_tower() is not None,
        "peak_mem_kind": memory.kind,
        "new_tokens": args.new_tokens,
        # Other work on the machine slows some runs; the load average says how busy it was.
        "load_avg_before": load_before,
        "load_avg_after": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    records = _summarise(rows, model, _vision_shape(model), meta, max(args.repeats, 5), device,
                         _parse_scores(args.score))
    print(format_table(records))
    for rec in records:
        if rec["select_s"] is not None:
            inline = f", {1e3 * rec['select_inline_s']:.1f} ms inside the prefill" if rec["select_inline_s"] else ""
            score = f" (scorer alone {1e3 * rec['score_s']:.1f} ms)" if rec["score_s"] is not None else ""
            print(f"{rec['label']}: selection {1e3 * rec['select_s']:.1f} ms{score}{inline} = "
                  f"{100 * rec['select_share']:.2f}% of prefill")
    print("KV cache: every run's KVCache.nbytes() == 2 * sum(layer lengths) * kv_heads * head_dim * bytes, "
          "and the lengths match the kept tokens (asserted)")

    if args.profile:
        if device.type != "cpu":
            print("--profile: the per-layer split needs synchronous ops; it runs on the CPU only")
        else:
            for row in rows:
                prof = profile_breakdown(model, prompts[0], row, memory)
                layers = prof["layers"]
                k = row.prune.layer if row.prune is not None else None
                head = f"{row.label}: prefill {prof['prefill']:.3f} s = before layer 0 {prof['before_first_layer']:.3f}"
                per = ", ".join(f"{t:.3f}" for t in layers)
                gaps = sum(prof["between_layers"]) - prof.get("prune_step", 0.0)
                step = f", pruning step {prof['prune_step']:.4f}" if k is not None else ""
                print(f"{head} + layers [{per}]{step} + other gaps {gaps:.4f} + after {prof['after_last_layer']:.4f}")
                for rec in records:
                    if rec["label"] == row.label:
                        rec["profile"] = prof
            model.set_prune(None)

    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(records, fh, indent=2)
        print(f"wrote {len(records)} rows to {args.json}")
    return records


if __name__ == "__main__":
    main()
