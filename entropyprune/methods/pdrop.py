"""PyramidDrop (Xing et al., CVPR 2025; Cooperx521/PyramidDrop): drop image tokens in stages, by the
attention of the last prompt token, so that the image part of the sequence shrinks like a pyramid.

The official rule (``pdrop_forward`` / ``pdrop_rank_drop`` at commit 6444f30), at each layer l of
``layer_list`` (default 8, 16, 24), before layer l runs: the hidden states entering layer l go through
layer l's own input RMSNorm, q/k projections and RoPE (the attention layer l is about to compute); the
last prompt token's attention row is a softmax over every key of the current sequence, averaged over the
heads; the image tokens still present keep their top ``int(V * r_{s+1})``, in their original order.
Counts are fractions of the *original* V (576 -> 288 -> 144 -> 72 with ratios 0.5, 0.25, 0.125, that is
lambda, lambda^2, lambda^3 for lambda = 0.5). After each drop the position ids are renumbered 0..n-1 and
decoding continues from each layer's own count. The pruned set is fixed for the whole generation.

Budgets (see :func:`schedule`): lambda comes from the budget and stage s keeps ``floor(V * lambda^s)``,
computed exactly. ``--prune-layer`` is not used: the stages' layers are ``layer_list``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

from torch import Tensor

from entropyprune.budget import as_fraction
from entropyprune.config import stages_average
from entropyprune.methods import PruneInputs, Stage, register, top_n

LAYERS_FLAG = "--prune-option layer_list"
EARLIER_LAYERS = (2, 8, 16)  # the authors' suggestion for a 64-token budget (PyramidDrop issue #29)


@dataclass
class PDropOptions:
    layer_list: tuple[int, ...] = (8, 16, 24)  # stage s prunes before this decoder layer (0-based)
    positions: str = field(default="renumber", metadata={"choices": ("renumber", "keep")})

    def check(self) -> None:
        layers = self.layer_list
        if not layers:
            raise ValueError("layer_list needs at least one layer")
        if layers[0] < 1 or any(b <= a for a, b in zip(layers, layers[1:], strict=False)):
            raise ValueError(f"layer_list must be increasing layers >= 1, got {','.join(map(str, layers))}")


def stage_counts(num_visual: int, lam: Fraction, stages: int) -> list[int]:
    """``[floor(V * lambda^s) for s = 1..stages]``, exactly."""
    return [math.floor(num_visual * lam**s) for s in range(1, stages + 1)]


def average(layers: tuple[int, ...], counts: list[int], num_layers: int, num_visual: int) -> Fraction:
    """Visual tokens per layer over all L layers: V before the first stage, then each stage's count."""
    return stages_average([Stage(layer, n) for layer, n in zip(layers, counts, strict=True)], num_layers, num_visual)


def _decimal(x: Fraction) -> str:
    """``x`` to at most 4 decimals (exact when it has no more)."""
    return f"{float(x):.4f}".rstrip("0").rstrip(".")


def _first_true(lo: int, hi: int, ok) -> int:
    """The smallest x in [lo, hi] with ok(x) for a predicate monotone in x (hi + 1 if none)."""
    while lo <= hi:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid - 1
        else:
            lo = mid + 1
    return lo


def _layers(options: PDropOptions, num_layers: int) -> tuple[int, ...]:
    layers = tuple(options.layer_list)
    if not layers or layers[0] < 1 or layers[-1] > num_layers - 1 or any(
            b <= a for a, b in zip(layers, layers[1:], strict=False)):
        raise ValueError(f"{LAYERS_FLAG}={','.join(map(str, layers))}: the layers must increase within "
                         f"[1, {num_layers - 1}] for a {num_layers}-layer model")
    return layers


def schedule(config, options: PDropOptions, num_layers: int, num_visual: int) -> list[Stage]:
    """The stages for a budget: lambda from the budget, stage s keeps ``floor(V * lambda^s)`` tokens.

    * ``--prune-ratio r``: lambda = r (0.5 is the official 288/144/72 for V = 576);
    * ``--prune-keep N``: lambda = N / V, so the first stage keeps N;
    * ``--prune-avg-tokens T``: lambda = n_1 / V for the largest first-stage count n_1 whose schedule
      averages at most T visual tokens over all L layers.

    Every stage must keep at least one token: a budget that would leave none is an error, as is an
    average below the smallest one these layers can reach. ``config.layer`` is ignored.
    """
    layers = _layers(options, num_layers)
    v, stages = num_visual, len(layers)
    layer_text = f"{LAYERS_FLAG}={','.join(map(str, layers))}"

    def counts_for(n1: int) -> list[int]:
        return stage_counts(v, Fraction(n1, v), stages)

    # The smallest first-stage count whose last stage still keeps a token: n_1^S >= V^(S-1).
    least_n1 = _first_true(1, v, lambda n: counts_for(n)[-1] >= 1)

    if config.ratio is not None:
        lam = as_fraction(config.ratio)
        counts = stage_counts(v, lam, stages)
        if counts[-1] < 1:
            # The smallest 4-decimal ratio that works (lambda^S >= 1 / V), so the user can type it.
            k = _first_true(1, 10**4, lambda k: math.floor(v * Fraction(k, 10**4) ** stages) >= 1)
            raise ValueError(f"--prune-ratio {config.ratio} keeps {'/'.join(map(str, counts))} of {v} visual "
                             f"tokens at layers {'/'.join(map(str, layers))}; every stage must keep at least "
                             f"one: use --prune-ratio >= {_decimal(Fraction(k, 10**4))} with {layer_text}")
    elif config.keep is not None:
        if config.keep > v:
            raise ValueError(f"--prune-keep {config.keep} is more than the {v} visual tokens per image")
        counts = counts_for(config.keep)
        if counts[-1] < 1:
            raise ValueError(f"--prune-keep {config.keep} keeps {'/'.join(map(str, counts))} of {v} visual "
                             f"tokens at layers {'/'.join(map(str, layers))}; every stage must keep at least "
                             f"one: use --prune-keep >= {least_n1} with {layer_text}")
    else:
        target = as_fraction(config.avg_tokens)
        if target > v:
            raise ValueError(f"--prune-avg-tokens {config.avg_tokens} is more than the {v} visual tokens per image")
        lowest = average(layers, counts_for(least_n1), num_layers, v)
        if lowest > target:
            hint = "" if layers == EARLIER_LAYERS or num_layers <= EARLIER_LAYERS[-1] else (
                f", or prune earlier, e.g. {LAYERS_FLAG}={','.join(map(str, EARLIER_LAYERS))} "
                "(the PyramidDrop authors' suggestion for 64 tokens)")
            raise ValueError(
                f"--prune-avg-tokens {config.avg_tokens} is not reachable with {layer_text} on a "
                f"{num_layers}-layer model: the smallest average that keeps a token at every stage is "
                f"{_decimal(lowest)} (first stage {least_n1}); use --prune-avg-tokens >= "
                f"{_decimal(Fraction(math.ceil(lowest * 10**4), 10**4))}{hint}")
        # The average grows with n_1, so the largest n_1 within the budget is one before the first above it.
        n1 = _first_true(least_n1, v, lambda n: average(layers, counts_for(n), num_layers, v) > target) - 1
        counts = counts_for(n1)
    return [Stage(layer, n) for layer, n in zip(layers, counts, strict=True)]


def positions(options: PDropOptions) -> str:
    return options.positions


@register("pdrop", options=PDropOptions, schedule=schedule, positions=positions)
def pdrop(inputs: PruneInputs, n_keep: int) -> tuple[Tensor, Tensor]:
    attn = inputs.attention("last", source="next")  # [I, 1, h, v]: the layer about to run, current sequence
    scores = attn[:, 0].mean(dim=1)  # mean over heads -> [I, v]
    return top_n(scores, n_keep), scores
