"""EntropyPrune: training-free visual-token pruning for LLaVA, scored by matrix entropy.

The method and the pruning framework only; the LLaVA runtime lives in ``llava`` and depends on this
package, never the reverse. The names below load on first use, so ``entropyprune.files`` (used by the
torch-free scorers) can be imported without torch.
"""

from __future__ import annotations

from importlib import import_module

_LAZY = {"PruneConfig": "entropyprune.config", "matrix_entropy": "entropyprune.score",
         "token_entropy": "entropyprune.score"}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'entropyprune' has no attribute {name!r}")
