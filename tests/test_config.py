"""PruneConfig: budget arithmetic (the papers' averaging convention) and flag-named validation errors.

The rule itself, against independent Fraction arithmetic, is tested in test_budget.py."""

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from entropyprune.config import PruneConfig
from entropyprune.methods import METHODS, STAGES, register

L, V = 32, 576


@pytest.mark.parametrize("avg,kept", [(192, 166), (128, 98), (64, 29)])
def test_avg_tokens_reproduce_the_released_budgets(avg, kept):
    cfg = PruneConfig(layer=2, avg_tokens=avg)
    assert cfg.resolve(L, V) == kept
    assert PruneConfig(layer=2, avg_tokens=float(avg)).resolve(L, V) == kept


def test_keep_and_ratio():
    assert PruneConfig(keep=166).resolve(L, V) == 166
    assert PruneConfig(keep=V).resolve(L, V) == V
    assert PruneConfig(ratio=0.25).resolve(L, V) == 144
    assert PruneConfig(ratio=1.0).resolve(L, V) == V
    assert PruneConfig(ratio=0.0078125).resolve(L, V) == 5  # 4.5 exactly: halves round up
    assert PruneConfig(ratio=Fraction(1, 2 * V)).resolve(L, V) == 1  # 0.5 exactly


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 79), st.integers(2, 80), st.integers(1, 1000), st.data())
def test_avg_tokens_equivalent_inverts_resolve(k, layers, visual, data):
    k = min(k, layers - 1)
    n = data.draw(st.integers(1, visual))
    cfg = PruneConfig(layer=k, keep=n)
    exact = Fraction(k * visual + (layers - k) * n, layers)
    avg = cfg.avg_tokens_equivalent(n, layers, visual)
    assert avg == float(exact)
    # Asking for exactly that average gives back N.
    assert PruneConfig(layer=k, avg_tokens=exact).resolve(layers, visual) == n
    # The float avg means its printed decimal, which may lie just below the exact average: then the floor
    # is N-1 (an error when N-1 = 0), and that is the rule, computed here independently.
    typed = Fraction(repr(avg))
    expected = (layers * typed - k * visual) // (layers - k)
    if expected >= 1:
        assert PruneConfig(layer=k, avg_tokens=avg).resolve(layers, visual) == expected
    else:
        with pytest.raises(ValueError, match="keeps 0 of"):
            PruneConfig(layer=k, avg_tokens=avg).resolve(layers, visual)
    if n < visual:
        assert PruneConfig(layer=k, avg_tokens=avg + 1e-9).resolve(layers, visual) == n


def test_avg_tokens_equivalent_of_the_paper_budgets():
    cfg = PruneConfig(avg_tokens=192)
    assert cfg.avg_tokens_equivalent(166, L, V) == 191.625  # (2*576 + 30*166) / 32, exactly
    assert cfg.avg_tokens_equivalent(V, L, V) == V


def test_round_trip_and_describe():
    cfg = PruneConfig(method="random", layer=3, ratio=0.5, states="key", variant="paper", seed=7)
    assert PruneConfig.from_dict(cfg.to_dict()) == cfg
    assert PruneConfig(avg_tokens=192).describe(L, V) == "entropy@K2 keep=166 (avg 192)"
    assert "keep=166" in PruneConfig(keep=166).describe(L, V)
    with pytest.raises(ValueError, match="unknown PruneConfig fields"):
        PruneConfig.from_dict({"keep": 1, "colour": "red"})


def test_default_variant_is_the_released_one():
    assert PruneConfig(keep=1).variant == "official"


@pytest.mark.parametrize(
    "kwargs,flag",
    [
        ({}, "--prune-keep"),  # no budget
        ({"keep": 10, "ratio": 0.5}, "--prune-ratio"),  # two budgets
        ({"keep": 10, "avg_tokens": 100}, "--prune-avg-tokens"),
        ({"keep": 0}, "--prune-keep"),
        ({"keep": 2.5}, "--prune-keep"),
        ({"ratio": 0.0}, "--prune-ratio"),
        ({"ratio": 1.5}, "--prune-ratio"),
        ({"avg_tokens": 0.5}, "--prune-avg-tokens"),
        ({"keep": 10, "method": "nope"}, "--prune-method"),
        ({"keep": 10, "states": "value"}, "--prune-states"),
        ({"keep": 10, "variant": "exact"}, "--entropy-variant"),
        ({"keep": 10, "layer": -1}, "--prune-layer"),
        ({"keep": 10, "layer": "two"}, "--prune-layer"),
        ({"keep": 10, "layer": 2.0}, "--prune-layer"),
        ({"keep": 10, "seed": "x"}, "--prune-seed"),
    ],
)
def test_validation_errors_name_the_flag(kwargs, flag):
    with pytest.raises(ValueError, match=flag):
        PruneConfig(**kwargs)


def test_validation_messages_list_the_allowed_values():
    with pytest.raises(ValueError, match="entropy") as err:
        PruneConfig(keep=10, method="nope")
    assert "random" in str(err.value)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        PruneConfig(ratio=2.0)
    with pytest.raises(ValueError, match="query, key"):
        PruneConfig(keep=1, states="hidden")


@pytest.mark.parametrize(
    "kwargs,flag,fragment",
    [
        ({"keep": 577}, "--prune-keep", "keeps 577 of 576"),
        ({"avg_tokens": 36}, "--prune-avg-tokens", "keeps 0 of 576"),
        ({"avg_tokens": 600}, "--prune-avg-tokens", "keeps 601 of 576"),
        ({"ratio": 0.0001}, "--prune-ratio", "keeps 0 of 576"),
        ({"keep": 10, "layer": 32}, "--prune-layer", "[1, 31]"),
        ({"keep": 10, "layer": 0}, "--prune-layer", "[1, 31]"),
    ],
)
def test_resolve_errors_name_the_flag_range_and_value(kwargs, flag, fragment):
    with pytest.raises(ValueError, match=flag) as err:
        PruneConfig(**kwargs).resolve(L, V)
    assert fragment in str(err.value)


def test_avg_tokens_error_gives_the_usable_range():
    with pytest.raises(ValueError) as err:
        PruneConfig(avg_tokens=36).resolve(L, V)
    assert "36.9375" in str(err.value)  # (2*576 + 30*1) / 32: the smallest average that keeps one token


def test_auto_layer_must_be_resolved_first():
    cfg = PruneConfig(layer="auto", avg_tokens=192)
    with pytest.raises(ValueError, match="--prune-layer 'auto' must be resolved"):
        cfg.resolve(L, V)
    cfg.layer = 2
    assert cfg.resolve(L, V) == 166


def test_vision_stage_methods_use_layer_zero():
    name = "_test_vision_stage"
    register(name, stage="vision")(lambda inputs, n: (None, None))
    try:
        cfg = PruneConfig(method=name, layer=0, avg_tokens=192)
        assert cfg.stage == "vision"
        assert cfg.resolve(L, V) == 192  # K = 0: the average is the number kept
        with pytest.raises(ValueError, match="--prune-layer must be 0"):
            PruneConfig(method=name, layer=2, keep=10).resolve(L, V)
    finally:
        METHODS.pop(name)
    assert name not in STAGES
