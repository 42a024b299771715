"""EntropyPrune: training-free visual-token pruning for LLaVA-1.5, scored by matrix entropy.

Imports torch only; the LLaVA runtime lives in ``llava`` and depends on this package, never the reverse.
"""

from entropyprune.config import PruneConfig
from entropyprune.score import matrix_entropy, token_entropy

__all__ = ["PruneConfig", "matrix_entropy", "token_entropy"]
