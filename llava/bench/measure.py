"""One measured run of the efficiency benchmark: prefill, decode, KV cache and memory for one row (vanilla or
a method at a budget), the cache check, and the selection-time and profile measurements (the timing
primitives themselves are in :mod:`llava.bench.timing`)."""

from __future__ import annotations

import ctypes
import gc
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from entropyprune.config import PruneConfig
from llava.bench.timing import median_seconds, sync
from llava.bench.workload import Prompt

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
    captured: Any = None  # [(PruneInputs, n_keep)] of one prefill's method calls, for timing them on their own
    calls_per_prefill: int = 1  # method calls in one prefill: stages x groups of images


class _TimedMethod:
    """Stands in for ``PruneHook.method``: records the inputs and (on CPU) the call's wall time."""

    def __init__(self, fn: Callable, row: Row, inline: bool):
        self.fn, self.row, self.inline = fn, row, inline

    def __call__(self, inputs, n_keep: int):
        if self.row.captured is None:
            self.row.captured = []
        if len(self.row.captured) < self.row.calls_per_prefill:
            self.row.captured.append((inputs, n_keep))
        if not self.inline:
            return self.fn(inputs, n_keep)
        start = time.perf_counter()
        out = self.fn(inputs, n_keep)
        self.row.inline.append(time.perf_counter() - start)
        return out


class Memory:
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


def _splice(model, prompt: Prompt):
    """The spliced prefill input, as ``generate`` builds it (left padding), with or without a vision tower."""
    features = None if prompt.features is None else [prompt.features]
    texts = [prompt.text] if prompt.text is not None else None
    return model.splice_multimodal(prompt.input_ids, prompt.images, None, None, padding_side="left",
                                   image_features=features, texts=texts)


def run_once(model, prompt: Prompt, row: Row, new_tokens: int, memory: Memory) -> dict[str, Any]:
    """One prefill + ``new_tokens - 1`` greedy decode steps with the cache; times, cache and trace."""
    from llava.model.language_model.modeling_llama import KVCache

    device = model.device
    lm = model.get_model()
    model.set_prune(row.prune)
    vision_stage = row.prune is not None and row.prune.stage == "vision"
    # A vision-stage method is called inside the splice: the model calls this wrapper instead.
    lm.vision_method = _TimedMethod(_method_fn(row), row, inline=device.type == "cpu") if vision_stage else None
    if vision_stage:
        row.calls_per_prefill = 1
    base = memory.reset()
    sync(device)
    t0 = time.perf_counter()
    splice = _splice(model, prompt)
    # The model's own hook builder, the one generate() calls: same trace, same checks.
    hook = model._prune_hook(splice)
    if hook is not None:
        hook.method = _TimedMethod(hook.method, row, inline=device.type == "cpu")
        row.calls_per_prefill = len(hook.plans) * len(hook.groups)
    cache = KVCache(len(lm.layers), extra=new_tokens)
    mask = splice.attention_mask if splice.has_padding else None
    hidden, _ = lm(splice.inputs_embeds, splice.position_ids, mask, cache, hook)
    token = model.lm_head(hidden[:, -1]).float().argmax(-1)
    sync(device)
    t1 = time.perf_counter()
    # Python ints kept by the cache: reading them costs nothing and touches no device memory.
    lengths, kv = cache.layer_lengths(), cache.nbytes()
    elem = cache.keys[0].element_size()
    for _ in range(new_tokens - 1):
        hidden, _ = lm(lm.embed_tokens(token[:, None]), cache.next_position[:, None], None, cache)
        token = model.lm_head(hidden[:, -1]).float().argmax(-1)
    sync(device)
    t2 = time.perf_counter()
    lm.vision_method = None
    trace = lm.prune_trace
    spans = splice.image_spans[0]
    n_text = splice.lengths[0] - sum(v for _, v in spans)
    # Visual tokens each layer holds, per image: V until the first stage, then what each stage left. A
    # vision-stage record (layer 0) holds the image's V before pruning; the splice already holds N.
    visual_by_layer, visual = [], []
    for j, (_, v) in enumerate(spans):
        stages = trace[0][j] if trace and trace[0] else []
        if stages and stages[0].layer == 0:
            v = stages[0].length
        visual.append(v)
        tokens = [v] * len(lm.layers)
        for rec in stages:
            for i in range(rec.layer, len(lm.layers)):
                tokens[i] = int(rec.kept.numel()) + rec.merged
        visual_by_layer.append(tokens)
    kept = [tokens[-1] for tokens in visual_by_layer]
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
        "n_text": n_text,
        "visual": visual,
        "kept": kept,
        "visual_by_layer": visual_by_layer,
    }


def check_cache(res: dict[str, Any], config, layer: int | None, label: str) -> None:
    """The KV cache holds exactly the tokens the pruning contract says (target: it shrinks as kept tokens say)."""
    n_text = res["n_text"]
    L = config.num_hidden_layers
    expect = [n_text + sum(tokens[i] for tokens in res["visual_by_layer"]) for i in range(L)]
    if res["lengths"] != expect:
        raise AssertionError(f"{label}: KV cache layer lengths {res['lengths']} != expected {expect}")
    width = config.num_key_value_heads * config.head_dim
    formula = 2 * sum(res["lengths"]) * width * res["elem"]
    if res["kv"] != formula:
        raise AssertionError(f"{label}: KVCache.nbytes() = {res['kv']} != 2*sum(lengths)*kv_heads*head_dim*bytes"
                             f" = {formula}")


def _method_fn(row: Row) -> Callable:
    from entropyprune.methods import get_method

    return get_method(row.prune.method)


def method_flops(row: Row) -> int | None:
    """Floating-point operations of one prefill's method calls, counted by torch's ``FlopCounterMode`` (matrix
    products, einsums and attention: the work that grows with the tokens; element-wise ops and eigen-solves
    are not counted), on the inputs captured inside the prefill.

    At the vision stage the projected features of every patch are computed before counting: vanilla LLaVA
    projects every patch too, and the vision column counts that projection for every row. What is counted is
    the method's work beyond it (CLIP's text tower for CDPruner, similarities, greedy steps, merging)."""
    if row.captured is None or row.prune is None:
        return None
    from torch.utils.flop_counter import FlopCounterMode

    from entropyprune.vision_inputs import VisionInputs

    method = _method_fn(row)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode():
        for inputs, _ in row.captured:
            inputs.forget()
            if isinstance(inputs, VisionInputs):
                inputs.projected  # noqa: B018 - computed outside the count (see above)
        with counter:
            for inputs, n_keep in row.captured:
                method(inputs, n_keep)
    return int(counter.get_total_flops())


def time_selection(row: Row, repeats: int, device: torch.device) -> tuple[float | None, float | None]:
    """The method call and the scorer alone, on the states captured inside the prefill."""
    if row.captured is None or row.prune is None:
        return None, None
    from entropyprune.score import token_entropy

    method = _method_fn(row)

    def select_all():
        # Every stage's call, each from scratch: nothing a method computed on demand is reused.
        for inputs, n_keep in row.captured:
            inputs.forget()
            method(inputs, n_keep)

    with torch.inference_mode():
        select = median_seconds(select_all, repeats, device)
        score = None
        inputs = row.captured[0][0]
        if row.prune.method == "entropy":
            states = inputs.states
            score = median_seconds(
                lambda: token_entropy(states, inputs.num_heads, variant=row.prune.variant, head_dim=states.shape[-1]),
                repeats, device)
    return select, score


# ------------------------------------------------------------------------------------------------ profiling


def profile_breakdown(model, prompt: Prompt, row: Row, memory: Memory) -> dict[str, float]:
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


