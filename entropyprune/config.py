"""PruneConfig: the one object that says which visual tokens a run keeps, from CLI to model."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from entropyprune import budget

STATES = ("query", "key")
VARIANTS = ("paper", "official")
AUTO_LAYER = "auto"

# How the command line spells each field; every error names the flag so the user knows what to fix.
FLAGS = {
    "method": "--prune-method",
    "layer": "--prune-layer",
    "keep": "--prune-keep",
    "avg_tokens": "--prune-avg-tokens",
    "ratio": "--prune-ratio",
    "states": "--prune-states",
    "variant": "--entropy-variant",
    "seed": "--prune-seed",
}

_BUDGETS = budget.BUDGETS


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class PruneConfig:
    """Which method prunes, where, and how many visual tokens per image survive.

    Exactly one budget is given (the rule, computed exactly, is :mod:`entropyprune.budget`'s):

    * ``keep=N``: N visual tokens per image pass layer K.
    * ``avg_tokens=T``: T visual tokens on average over all L layers (the papers' convention):
      N = floor((L*T - K*V) / (L-K)); 192/128/64 -> 166/98/29 for L=32, K=2, V=576. A float T means
      the decimal it prints as (522.8 is 5228/10).
    * ``ratio=r``: N = round(r*V), halves rounded up.

    ``layer`` is K (0-based): layers 0..K-1 see every token, K..L-1 only the kept ones. In-language-model
    methods need 1 <= K <= L-1; vision-stage methods (registry ``stage="vision"``) run before the LLM
    and need K = 0. ``"auto"`` is a placeholder for the Entropy Collapse Layer and must be replaced by
    a number before :meth:`resolve`.

    ``variant`` defaults to ``"official"``: the score the released code computes (centring only, no
    L2 normalisation, float64, eigenvalue floor 1e-10, / log h). That is what produced the published
    numbers, so the default reproduces them; ``"paper"`` is Eq. 10-14 as written. See
    :mod:`entropyprune.score` for how the two differ.
    """

    method: str = "entropy"
    layer: int | str = 2
    keep: int | None = None
    avg_tokens: int | float | None = None
    ratio: float | None = None
    states: str = "query"
    variant: str = "official"
    seed: int = 0

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise ValueError naming the offending flag, its allowed values and the value given."""
        from entropyprune.methods import available_methods

        methods = available_methods()
        if self.method not in methods:
            raise ValueError(
                f"{FLAGS['method']} {self.method!r} is not a known method; choose one of {', '.join(methods)}"
            )
        if not (self.layer == AUTO_LAYER or (_is_int(self.layer) and self.layer >= 0)):
            raise ValueError(
                f"{FLAGS['layer']} must be an integer >= 0 or {AUTO_LAYER!r}, got {self.layer!r}"
            )
        budget.check_budget(self.keep, self.avg_tokens, self.ratio, FLAGS)
        if self.states not in STATES:
            raise ValueError(f"{FLAGS['states']} must be one of {', '.join(STATES)}, got {self.states!r}")
        if self.variant not in VARIANTS:
            raise ValueError(
                f"{FLAGS['variant']} must be one of {', '.join(VARIANTS)}, got {self.variant!r}"
            )
        if not _is_int(self.seed):
            raise ValueError(f"{FLAGS['seed']} must be an integer, got {self.seed!r}")

    @property
    def stage(self) -> str:
        """``"llm"`` (pruned inside the language model) or ``"vision"`` (before it), from the registry."""
        from entropyprune.methods import method_stage

        return method_stage(self.method)

    def _check_layer(self, num_layers: int) -> int:
        if self.layer == AUTO_LAYER:
            raise ValueError(
                f"{FLAGS['layer']} {AUTO_LAYER!r} must be resolved to a layer number (the Entropy Collapse "
                "Layer) before the budget can be computed"
            )
        if self.stage == "vision":
            if self.layer != 0:
                raise ValueError(
                    f"{FLAGS['layer']} must be 0 for {self.method!r}, which prunes before the language "
                    f"model; got {self.layer}"
                )
        elif not 1 <= self.layer <= num_layers - 1:
            raise ValueError(
                f"{FLAGS['layer']} must be in [1, {num_layers - 1}] for a {num_layers}-layer model, "
                f"got {self.layer}"
            )
        return self.layer

    # ------------------------------------------------------------------ budget
    def resolve(self, num_layers: int, num_visual: int) -> int:
        """Number N of visual tokens kept per image, for an L-layer model and V tokens per image."""
        if not (_is_int(num_layers) and num_layers >= 1):
            raise ValueError(f"num_layers must be an integer >= 1, got {num_layers!r}")
        k = self._check_layer(num_layers)
        return budget.keep_for_budget(
            num_layers, k, num_visual, keep=self.keep, avg_tokens=self.avg_tokens, ratio=self.ratio, flags=FLAGS
        )

    def avg_tokens_equivalent(self, n_keep: int, num_layers: int, num_visual: int) -> float:
        """Visual tokens per layer averaged over all L layers when N are kept from layer K on."""
        k = self._check_layer(num_layers)
        return float(budget.avg_tokens_equivalent(n_keep, num_layers, k, num_visual))

    # ------------------------------------------------------------------ records
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruneConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown PruneConfig fields {unknown}; expected a subset of {sorted(known)}")
        return cls(**data)

    def describe(self, num_layers: int | None = None, num_visual: int | None = None) -> str:
        """Short label, e.g. ``entropy@K2 keep=166 (avg 192)`` when the model sizes are given."""
        head = f"{self.method}@K{self.layer}"
        if num_layers is None or num_visual is None or self.layer == AUTO_LAYER:
            name = next(name for name in _BUDGETS if getattr(self, name) is not None)
            return f"{head} {name}={getattr(self, name)}"
        n = self.resolve(num_layers, num_visual)
        avg = self.avg_tokens
        if avg is None:
            avg = self.avg_tokens_equivalent(n, num_layers, num_visual)
        return f"{head} keep={n} (avg {float(avg):.4g})"
