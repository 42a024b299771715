"""The token budget: how many visual tokens N per image survive layer K. One exact rule for everything.

Per image, with V visual tokens, an L-layer language model and pruning layer K (layers 0..K-1 see all
V tokens, layers K..L-1 only the N kept), exactly one budget is given:

* ``keep=N``: N.
* ``avg_tokens=T``: T visual tokens on average over all L layers (the papers' convention),
  ``N = floor((L*T - K*V) / (L-K))``; 192 / 128 / 64 -> 166 / 98 / 29 for L=32, K=2, V=576. At K = 0
  (methods that prune before the language model) this is ``N = floor(T)``.
* ``ratio=r``: r is the kept fraction, ``N = round(r*V)`` with halves rounded up.

N must lie in [1, V]. The inverse, :func:`avg_tokens_equivalent`, is ``(K*V + (L-K)*N) / L``.

Everything is computed in integers and :class:`fractions.Fraction`, never in binary floating point,
so the floor and the rounding are exact. A float budget means the decimal it prints as (``repr``),
which is what was typed on the command line: ``522.8`` is 5228/10, not the double just below it.
(With float arithmetic L=15, K=1, V=576, T=522.8 gave 518 instead of (7842 - 576) / 14 = 519.)

:class:`entropyprune.config.PruneConfig` (the runtime), :mod:`entropyprune.flops` (``entropyprune
flops``) and the efficiency benchmark all call :func:`keep_for_budget`; this module imports nothing of
the project, so the FLOPs tools stay standalone. Errors name the budget by the caller's flags.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from fractions import Fraction
from numbers import Rational, Real
from typing import Any

__all__ = ["BUDGETS", "BudgetError", "as_fraction", "avg_tokens_equivalent", "check_budget", "keep_for_budget"]

BUDGETS = ("keep", "avg_tokens", "ratio")


class BudgetError(ValueError):
    """A budget or layer that is invalid or does not fit the model; ``name`` is the parameter
    (``keep``, ``avg_tokens``, ``ratio``, ``layer``, or ``budget`` when not exactly one budget is given)
    and ``value`` what was given."""

    def __init__(self, name: str, value: Any, message: str) -> None:
        self.name = name
        self.value = value
        super().__init__(message)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _finite(value: Real) -> bool:
    return isinstance(value, Rational) or math.isfinite(value)  # a Fraction may be too large for a float


def _label(flags: Mapping[str, str] | None, name: str) -> str:
    """How the caller spells parameter ``name`` (e.g. ``--prune-keep``); the name itself by default."""
    return (flags or {}).get(name, name)


def as_fraction(value: Real) -> Fraction:
    """``value`` as an exact Fraction: ints and Fractions as they are, a float as the decimal it prints
    as (``repr``), so ``as_fraction(522.8) == Fraction(5228, 10)``."""
    if isinstance(value, Rational):
        return Fraction(value)
    return Fraction(repr(float(value)))


def _up(x: Fraction, places: int) -> str:
    """The smallest number with ``places`` decimals that is >= x, e.g. 39.3334 for 590/15: a bound the
    user can type and that still works (plain rounding could give one that does not)."""
    q = Fraction(math.ceil(x * 10**places), 10**places)
    return f"{float(q):.{places}f}".rstrip("0").rstrip(".")


def check_budget(
    keep: Any = None, avg_tokens: Any = None, ratio: Any = None, flags: Mapping[str, str] | None = None
) -> str:
    """Check that exactly one budget is given and that its value is valid on its own (no model sizes
    needed); returns its name. ``flags`` maps parameter names to the labels used in the messages."""
    values = {"keep": keep, "avg_tokens": avg_tokens, "ratio": ratio}
    given = [name for name in BUDGETS if values[name] is not None]
    if len(given) != 1:
        names = ", ".join(_label(flags, name) for name in BUDGETS)
        what = "none" if not given else ", ".join(f"{_label(flags, n)} {values[n]!r}" for n in given)
        raise BudgetError("budget", None, f"give exactly one token budget out of {names}; got {what}")
    name = given[0]
    value, flag = values[name], _label(flags, name)
    if name == "keep" and not (_is_int(value) and value >= 1):
        raise BudgetError(name, value, f"{flag} must be an integer >= 1, got {value!r}")
    if name == "avg_tokens" and not (_is_real(value) and _finite(value) and value >= 1):
        raise BudgetError(name, value, f"{flag} must be a number >= 1, got {value!r}")
    if name == "ratio" and not (_is_real(value) and 0 < value <= 1):
        raise BudgetError(name, value, f"{flag} must be a number in (0, 1], got {value!r}")
    return name


def _check_sizes(num_layers: Any, layer: Any, num_visual: Any, flags: Mapping[str, str] | None) -> None:
    if not (_is_int(num_layers) and num_layers >= 1):
        raise ValueError(f"num_layers must be an integer >= 1, got {num_layers!r}")
    if not (_is_int(num_visual) and num_visual >= 1):
        raise ValueError(f"num_visual must be an integer >= 1, got {num_visual!r}")
    if not (_is_int(layer) and 0 <= layer <= num_layers - 1):
        raise BudgetError(
            "layer", layer,
            f"{_label(flags, 'layer')} must be in [0, {num_layers - 1}] for a {num_layers}-layer model, got {layer!r}",
        )


def avg_tokens_equivalent(n_keep: int, num_layers: int, layer: int, num_visual: int) -> Fraction:
    """Visual tokens per layer averaged over all L layers when N are kept from layer K on:
    ``(K*V + (L-K)*N) / L``, exactly."""
    _check_sizes(num_layers, layer, num_visual, None)
    return Fraction(layer * num_visual + (num_layers - layer) * n_keep, num_layers)


def keep_for_budget(
    num_layers: int,
    layer: int,
    num_visual: int,
    *,
    keep: int | None = None,
    avg_tokens: Real | None = None,
    ratio: Real | None = None,
    flags: Mapping[str, str] | None = None,
) -> int:
    """N, the visual tokens kept per image after ``layer`` (K, 0..L-1) of ``num_layers`` (L), for
    ``num_visual`` (V) tokens per image and exactly one of keep / avg_tokens / ratio (module docstring).

    Raises :class:`BudgetError` (a ValueError) naming the budget by ``flags`` (e.g. ``{"keep":
    "--prune-keep", ...}``) when it is invalid or does not give 1 <= N <= V, with the range that would.
    """
    name = check_budget(keep, avg_tokens, ratio, flags)
    _check_sizes(num_layers, layer, num_visual, flags)
    L, K, V = num_layers, layer, num_visual
    flag = _label(flags, name)
    if name == "keep":
        given, n = keep, keep
        allowed = f"[1, {V}]"
    elif name == "avg_tokens":
        given, t = avg_tokens, as_fraction(avg_tokens)
        n = math.floor((L * t - K * V) / (L - K))
        lowest = avg_tokens_equivalent(1, L, K, V)  # the smallest average that keeps one token
        allowed = f"[{_up(lowest, 4)}, {V}] (so that 1 <= kept <= {V})"
    else:
        given, r = ratio, as_fraction(ratio)
        n = math.floor(r * V + Fraction(1, 2))  # round half up
        allowed = f"[{_up(Fraction(1, 2 * V), 7)}, 1] (so that at least one of {V} tokens is kept)"
    if not 1 <= n <= V:
        raise BudgetError(
            name, given,
            f"{flag} {given} keeps {n} of {V} visual tokens after layer {K} of {L}; "
            f"it must keep between 1 and {V}: use {flag} in {allowed}",
        )
    if name == "avg_tokens" and t > V:  # floors to V, but no average over layers exceeds V
        raise BudgetError(
            name, given, f"{flag} {given} is more than the {V} visual tokens per image: use {flag} in {allowed}"
        )
    return int(n)
