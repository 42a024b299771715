"""The registry of visual-token pruning methods: one signature for every method.

A method is ``fn(inputs: PruneInputs, n_keep: int) -> Selection`` (or the pair ``(kept, scores)``); a
vision-stage method gets :class:`entropyprune.vision_inputs.VisionInputs` instead (see that module):

* ``kept``: LongTensor ``[I, n_keep]``, ascending indices into each image's current tokens;
* ``scores``: float ``[I, V]``, the per-token values that explain the choice (any per-token float for
  methods that do not rank by a score);
* optionally ``embeds`` ``[I, n_keep, D]`` to replace the kept tokens' hidden states, and ``merged``
  ``[I, M, D]``, new tokens placed right after the kept ones (a method that merges declares M in its
  schedule, so the layout is known before the layer loop).

``inputs`` holds the images of one group: images of any rows of the batch that have the same token count
and budget at this stage, so one call handles them all. What a method may read is computed only when it
asks (see :class:`entropyprune.inputs.PruneInputs`).

Methods run inside the prefill, so they must not synchronise with the device (no ``.item()``,
``.tolist()``, ``.cpu()`` of device tensors) and must not loop over tokens in Python.

Registering a method: one file in this package with ``@register("name", options=Options, schedule=fn)``,
imported at the bottom of this file. ``options`` is a dataclass whose defaults are the official code's;
``schedule(config, options, num_layers, num_visual) -> [Stage, ...]`` turns the budget into the stages
(one stage at layer K keeping ``config.resolve(...)`` when omitted). See docs/Methods.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from entropyprune.inputs import PruneInputs

if TYPE_CHECKING:
    from entropyprune.config import PruneConfig

__all__ = [
    "METHODS",
    "STAGES",
    "MethodSpec",
    "PruneInputs",
    "PruneMethod",
    "Selection",
    "Stage",
    "available_methods",
    "get_method",
    "get_spec",
    "method_stage",
    "register",
    "top_n",
]


@dataclass(frozen=True)
class Stage:
    """One pruning point: before decoder layer ``layer``, each image keeps ``keep`` of its tokens, and
    ``merged`` new tokens (made by the method from the others) follow them."""

    layer: int
    keep: int
    merged: int = 0

    @property
    def out(self) -> int:
        return self.keep + self.merged


@dataclass
class Selection:
    kept: Tensor
    scores: Tensor
    embeds: Tensor | None = None
    merged: Tensor | None = None


PruneMethod = Callable[[PruneInputs, int], Any]
Schedule = Callable[["PruneConfig", Any, int, int], list[Stage]]


@dataclass(frozen=True)
class MethodSpec:
    name: str
    fn: PruneMethod
    stage: str  # the default stage: "llm" (inside the language model, K >= 1) or "vision" (before it, K = 0)
    options: type | None = None
    schedule: Schedule | None = None
    positions: Callable[[Any], str] | None = None  # "keep" (original ids) or "renumber", from the options
    stages: tuple[str, ...] = ()  # every stage the method can run at (``layer 0`` picks "vision")
    needs: tuple[str, ...] = ()  # what the model must load for it: "clip_text" (CLIP's text tower)
    adaptive: Callable[[Any], bool] | None = None  # from the options: picks its own count (no budget)
    # LLaVA-1.6 (anyres) at the vision stage: ``anyres(options, mm_patch_merge_type)`` names how the method's
    # official code treats an image's views (see ANYRES_LAYOUTS) or raises ValueError (one line: the option
    # or setting it needs); None: its official code has no LLaVA-NeXT path, so it is refused there.
    anyres: Callable[[Any, str], str] | None = None

    def __post_init__(self) -> None:
        if not self.stages:
            object.__setattr__(self, "stages", (self.stage,))


METHODS: dict[str, MethodSpec] = {}
_STAGE_NAMES = ("llm", "vision")


class _Stages(dict):
    """``STAGES[name]``: a method's stage (kept for code that reads the registry as a mapping)."""

    def __getitem__(self, name):
        return METHODS[name].stage

    def __contains__(self, name):
        return name in METHODS

    def __iter__(self):
        return iter(METHODS)

    def __len__(self):
        return len(METHODS)


STAGES = _Stages()


# How a vision-stage method's official code handles a LLaVA-1.6 image (``MethodSpec.anyres``):
# "merged": the model's own merge first (unpad, newlines), then the method on that sequence of V tokens;
# "flat" / "spatial": the method on every view (base and crops) with the budget per view, the kept tokens then
#   laid out by that merge (views in turn / base, then the crop grid row by row; no unpad, no newline);
# "visionzip" / "visionzip_flat": per view as well, in VisionZip's own order (llava/model/llava_arch.py).
ANYRES_LAYOUTS = ("merged", "flat", "spatial", "visionzip", "visionzip_flat")


def per_view_layout(method: str, merge: str, strip_unpad: bool) -> str:
    """``MethodSpec.anyres`` of a method whose official LLaVA-NeXT code prunes each view with the budget per view
    and drops ``_unpad`` from the merge type (no unpad, no image_newline): allowed only when asked for."""
    if "unpad" not in merge:
        return merge
    if not strip_unpad:
        raise ValueError(f"--prune-method {method} on LLaVA-1.6: its official code prunes each view (base and crops) "
                         f"with the budget per view and drops unpad and image_newline from the merge ({merge} -> "
                         f"{merge.replace('_unpad', '')}); pass --prune-option strip_unpad=true to run it that way")
    return merge.replace("_unpad", "")


def register(name: str, *, stage: str | tuple[str, ...] = "llm", options: type | None = None,
             schedule: Schedule | None = None, positions: Callable[[Any], str] | None = None,
             needs: tuple[str, ...] = (), adaptive: Callable[[Any], bool] | None = None,
             anyres: Callable[[Any, str], str] | None = None) -> Callable[[PruneMethod], PruneMethod]:
    """Decorator adding ``fn`` to the registry under ``name``.

    ``stage``: "llm", "vision", or both as a tuple (the first is the default; ``--prune-layer 0`` picks
    the vision stage). ``needs``: parts the model loads only for this method ("clip_text").
    ``adaptive(options)``: True when the method picks its own count per image (then no budget is given).
    ``anyres(options, mm_patch_merge_type)``: its LLaVA-1.6 path, one of ANYRES_LAYOUTS (None: refused there).
    """
    stages = (stage,) if isinstance(stage, str) else tuple(stage)
    if not stages or any(s not in _STAGE_NAMES for s in stages):
        raise ValueError(f"stage must be one of {', '.join(_STAGE_NAMES)} or a tuple of them, got {stage!r}")

    def add(fn: PruneMethod) -> PruneMethod:
        if name in METHODS:
            raise ValueError(f"pruning method {name!r} is already registered")
        METHODS[name] = MethodSpec(name, fn, stages[0], options, schedule, positions, stages, tuple(needs), adaptive,
                                   anyres)
        return fn

    return add


def available_methods() -> list[str]:
    return sorted(METHODS)


def _unknown(name: str) -> ValueError:
    return ValueError(
        f"--prune-method {name!r} is not a known method; choose one of {', '.join(available_methods())}"
    )


def get_spec(name: str) -> MethodSpec:
    if name not in METHODS:
        raise _unknown(name)
    return METHODS[name]


def get_method(name: str) -> PruneMethod:
    return get_spec(name).fn


def method_stage(name: str) -> str:
    return get_spec(name).stage


def as_selection(result: Any) -> Selection:
    if isinstance(result, Selection):
        return result
    kept, scores = result
    return Selection(kept, scores)


def top_n(scores: Tensor, n: int) -> Tensor:
    """Indices of the ``n`` highest scores per row, ties toward the lower index, ascending.

    A stable descending sort keeps equal scores in index order, which ``topk`` does not promise.
    ``scores`` is ``[..., V]``; the result is int64 ``[..., n]`` on the same device.
    """
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    size = scores.shape[-1]
    if not 0 <= n <= size:
        raise ValueError(f"cannot keep {n} of {size} tokens")
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    return torch.sort(order[..., :n], dim=-1).values


# Imported last so that each module's @register runs against the registry above.
from entropyprune.methods import (  # noqa: E402, F401
    cdpruner,
    dart,
    divprune,
    entropy,
    fastv,
    pdrop,
    prumerge,
    random,
    sparsevlm,
    visionzip,
    vispruner,
)
