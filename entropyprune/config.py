"""PruneConfig: the one object that says which visual tokens a run keeps, from CLI to model."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from fractions import Fraction
from typing import Any

from entropyprune import budget
from entropyprune.options import build_options, options_to_dict

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
    "options": "--prune-option",
    "keep_newlines": "--prune-keep-newlines",
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
    layer: int | str | None = None  # None: 2 for in-LLM methods, 0 for vision-stage methods
    keep: int | None = None
    avg_tokens: int | float | None = None
    ratio: float | None = None
    states: str = "query"
    variant: str = "official"
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    # LLaVA-1.6: always keep the image_newline tokens of an image's crop grid; the budget then applies to its
    # other tokens (V minus its newlines). False (the default, as the paper's release and DART): newline
    # tokens are visual tokens like any other.
    keep_newlines: bool = False

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise ValueError naming the offending flag, its allowed values and the value given."""
        from entropyprune.methods import available_methods, get_spec

        methods = available_methods()
        if self.method not in methods:
            raise ValueError(
                f"{FLAGS['method']} {self.method!r} is not a known method; choose one of {', '.join(methods)}"
            )
        spec = get_spec(self.method)
        if self.layer is None:
            self.layer = 0 if spec.stage == "vision" else 2
        if not (self.layer == AUTO_LAYER or (_is_int(self.layer) and self.layer >= 0)):
            raise ValueError(
                f"{FLAGS['layer']} must be an integer >= 0 or {AUTO_LAYER!r}, got {self.layer!r}"
            )
        if not isinstance(self.options, dict):
            raise ValueError(f"options must be a dict of NAME: VALUE, got {type(self.options).__name__}")
        # Parsed and checked here, so a bad option fails before any model is loaded; stored normalised.
        self.options = options_to_dict(self.method_options())
        if self.adaptive:
            given = [FLAGS[name] for name in _BUDGETS if getattr(self, name) is not None]
            if given:
                raise ValueError(
                    f"{self.method!r} picks its own number of tokens per image (adaptive), so it takes no budget; "
                    f"drop {', '.join(given)} or turn its adaptive count off with a --prune-option "
                    "(docs/Methods.md)")
        else:
            budget.check_budget(self.keep, self.avg_tokens, self.ratio, FLAGS)
        if self.states not in STATES:
            raise ValueError(f"{FLAGS['states']} must be one of {', '.join(STATES)}, got {self.states!r}")
        if self.variant not in VARIANTS:
            raise ValueError(
                f"{FLAGS['variant']} must be one of {', '.join(VARIANTS)}, got {self.variant!r}"
            )
        if not _is_int(self.seed):
            raise ValueError(f"{FLAGS['seed']} must be an integer, got {self.seed!r}")
        if not isinstance(self.keep_newlines, bool):
            raise ValueError(f"keep_newlines ({FLAGS['keep_newlines']}) must be true or false, "
                             f"got {self.keep_newlines!r}")
        if self.layer != AUTO_LAYER and self.layer != 0 and spec.stages == ("vision",):
            raise ValueError(
                f"{FLAGS['layer']} must be 0 for {self.method!r}, which prunes before the language model; "
                f"got {self.layer}")

    def method_options(self) -> Any:
        """The method's options dataclass with this config's values (None for a method without options)."""
        from entropyprune.methods import get_spec

        return build_options(self.method, get_spec(self.method).options, self.options)

    def schedule(self, num_layers: int, num_visual: int) -> list:
        """The stages ``[Stage(layer, keep, merged), ...]`` for an L-layer model and V tokens per image.

        Single-stage methods: one stage at layer K keeping :meth:`resolve`'s N. Multi-stage methods
        (PDrop, SparseVLM) turn the budget into their schedule by their documented rule.
        """
        from entropyprune.methods import Stage, get_spec

        spec = get_spec(self.method)
        if self.adaptive:
            raise ValueError(
                f"{self.method!r} picks its own number of tokens per image (adaptive): its kept counts are known "
                "only after a run (the run record gives their mean and range), not from a schedule")
        if spec.schedule is None:
            return [Stage(self.layer, self.resolve(num_layers, num_visual))]
        if not (_is_int(num_layers) and num_layers >= 2):
            raise ValueError(f"num_layers must be an integer >= 2, got {num_layers!r}")
        stages = spec.schedule(self, self.method_options(), num_layers, num_visual)
        check_stages(stages, num_layers, num_visual, vision=self.stage == "vision")
        return stages

    def caps(self, num_visual: int) -> bool:
        """Whether the budget asks more of an image of V tokens than it has (``keep`` or ``avg_tokens`` above V).

        On a model whose V is each image's own (LLaVA-1.6) such an image keeps all its V tokens instead (see
        :meth:`image_schedule`); a model with one V (LLaVA-1.5) refuses the budget when it is configured.
        """
        if self.adaptive:
            return False
        if self.keep is not None:
            return self.keep > num_visual
        if self.avg_tokens is not None:
            return budget.as_fraction(self.avg_tokens) > num_visual
        return False

    def image_schedule(self, num_layers: int, num_visual: int) -> tuple[list, bool]:
        """:meth:`schedule` for one image of a per-image-V model, and whether its budget was capped: a budget
        above the image's V that the method's schedule refuses becomes ``keep = V`` (the method's own schedule
        for it; single-stage top-N methods then keep every token, PDrop keeps V at every stage, DART rounds V
        down to its pivot count). A schedule that does not take the budget as a count (SparseVLM's
        token_list, DART's max_num_trunction) is not capped."""
        if not self.caps(num_visual):
            return self.schedule(num_layers, num_visual), False
        try:
            return self.schedule(num_layers, num_visual), False
        except ValueError as err:
            try:
                return replace(self, keep=num_visual, avg_tokens=None).schedule(num_layers, num_visual), True
            except ValueError:
                raise err from None  # refused for another reason than V: the budget as the user gave it

    @property
    def stage(self) -> str:
        """``"llm"`` (pruned inside the language model) or ``"vision"`` (before it): the method's stage,
        or, for a method that runs at both (``random``), ``"vision"`` when ``layer`` is 0."""
        from entropyprune.methods import get_spec

        spec = get_spec(self.method)
        if "vision" in spec.stages and (self.layer == 0 or spec.stages == ("vision",)):
            return "vision"
        return "llm"

    @property
    def adaptive(self) -> bool:
        """True when the method chooses each image's kept count itself (no budget, no fixed schedule)."""
        from entropyprune.methods import get_spec

        spec = get_spec(self.method)
        return spec.adaptive is not None and bool(spec.adaptive(self.method_options()))

    def _check_layer(self, num_layers: int) -> int:
        if self.layer == AUTO_LAYER:
            raise ValueError(
                f"{FLAGS['layer']} {AUTO_LAYER!r} must be resolved to a layer number (the Entropy Collapse "
                "Layer) before the budget can be computed"
            )
        if self.stage == "vision":
            return 0
        if not 1 <= self.layer <= num_layers - 1:
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

    def schedule_average(self, num_layers: int, num_visual: int) -> float:
        """Visual tokens per layer averaged over all L layers under :meth:`schedule` (merged ones count)."""
        return float(stages_average(self.schedule(num_layers, num_visual), num_layers, num_visual))

    # ------------------------------------------------------------------ records
    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if not out["options"]:
            del out["options"]  # methods without options keep the records they always had
        if not out["keep_newlines"]:
            del out["keep_newlines"]  # idem: the default leaves earlier records as they were
        return out


    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruneConfig:
        known = {f.name for f in fields(cls)}
        data = dict(data)
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
        stages = self.schedule(num_layers, num_visual)
        avg = float(stages_average(stages, num_layers, num_visual))
        if len(stages) == 1 and not stages[0].merged:
            asked = self.avg_tokens if self.avg_tokens is not None else avg  # the budget as given, if it was one
            return f"{head} keep={stages[0].keep} (avg {float(asked):.4g})"
        keeps = "/".join(f"{st.out}@{st.layer}" for st in stages)
        return f"{self.method} keep={keeps} (avg {avg:.4g})"


def check_stages(stages: list, num_layers: int, num_visual: int, vision: bool = False) -> None:
    """Stages must have increasing layers in [1, L-1] and keep between 1 and what the previous one left;
    a vision-stage schedule is one stage at layer 0."""
    if not stages:
        raise ValueError("a schedule needs at least one stage")
    if vision and (len(stages) != 1 or stages[0].layer != 0):
        raise ValueError(f"a vision-stage schedule is one stage at layer 0; got {stages}")
    tokens, last = num_visual, -1 if vision else 0
    for st in stages:
        if not last < st.layer <= num_layers - 1:
            layers = [s.layer for s in stages]
            raise ValueError(f"stage layers must increase within [1, {num_layers - 1}]; got {layers}")
        if not 1 <= st.keep <= tokens:
            raise ValueError(f"a stage at layer {st.layer} cannot keep {st.keep} of {tokens} visual tokens")
        tokens, last = st.out, st.layer


def stages_average(stages: list, num_layers: int, num_visual: int) -> Fraction:
    """Visual tokens per layer averaged over all L layers: V before the first stage, then each stage's out."""
    total, tokens, start = 0, num_visual, 0
    for st in stages:
        total += (st.layer - start) * tokens
        tokens, start = st.out, st.layer
    total += (num_layers - start) * tokens
    return Fraction(total, num_layers)
