"""The registry of visual-token selection rules: one signature for every method.

A method is ``fn(inputs: PruneInputs, n_keep: int) -> (kept, scores)``:

* ``kept``: LongTensor ``[I, n_keep]``, ascending indices relative to each image's span;
* ``scores``: float32 ``[I, V]``, the per-token values that explain the choice (for methods that do
  not rank by a score, any per-token float that does).

Methods run inside the prefill, so they must not synchronise with the device (no ``.item()``,
``.tolist()``, ``.cpu()`` of device tensors) and must not loop over tokens in Python.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from entropyprune.config import PruneConfig

__all__ = [
    "METHODS",
    "STAGES",
    "PruneInputs",
    "PruneMethod",
    "available_methods",
    "get_method",
    "method_stage",
    "register",
    "top_n",
]


@dataclass
class PruneInputs:
    """What a method sees for the images of one group (one batch row).

    Attributes:
        states: ``[I, V, h, d_h]`` post-RoPE query or key states (``config.states``) of the image
            tokens, produced inside layer K-1; I images, V tokens each.
        hidden: ``[I, V, D]`` hidden states of the image tokens entering layer K.
        num_heads: h.
        config: the run's PruneConfig.
        extras: optional method-specific inputs (e.g. the last text token's attention).
    """

    states: Tensor
    hidden: Tensor
    num_heads: int
    config: PruneConfig
    extras: dict[str, Any] = field(default_factory=dict)


PruneMethod = Callable[[PruneInputs, int], tuple[Tensor, Tensor]]

METHODS: dict[str, PruneMethod] = {}
# "llm": runs inside the language model at layer K >= 1; "vision": before it, at K = 0.
STAGES: dict[str, str] = {}
_STAGE_NAMES = ("llm", "vision")


def register(name: str, *, stage: str = "llm") -> Callable[[PruneMethod], PruneMethod]:
    """Decorator adding ``fn`` to the registry under ``name``."""
    if stage not in _STAGE_NAMES:
        raise ValueError(f"stage must be one of {', '.join(_STAGE_NAMES)}, got {stage!r}")

    def add(fn: PruneMethod) -> PruneMethod:
        if name in METHODS:
            raise ValueError(f"pruning method {name!r} is already registered")
        METHODS[name] = fn
        STAGES[name] = stage
        return fn

    return add


def available_methods() -> list[str]:
    return sorted(METHODS)


def _unknown(name: str) -> ValueError:
    return ValueError(
        f"--prune-method {name!r} is not a known method; choose one of {', '.join(available_methods())}"
    )


def get_method(name: str) -> PruneMethod:
    if name not in METHODS:
        raise _unknown(name)
    return METHODS[name]


def method_stage(name: str) -> str:
    if name not in STAGES:
        raise _unknown(name)
    return STAGES[name]


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
from entropyprune.methods import entropy, random  # noqa: E402, F401
