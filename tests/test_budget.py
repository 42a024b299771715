"""The one budget rule (entropyprune.budget), checked against Fraction arithmetic written out here, and
the runtime (PruneConfig.resolve), the FLOPs tools (flops.resolve_keep, ``entropyprune flops``) and the
efficiency benchmark agreeing on it."""

import json
import math
import re
from fractions import Fraction

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from entropyprune import flops as F
from entropyprune.budget import BudgetError, as_fraction, avg_tokens_equivalent, keep_for_budget
from entropyprune.config import PruneConfig
from llava.cli import main

SETTINGS = settings(max_examples=300, deadline=None)


# ------------------------------------------------------------------------------------ the reference


def exact(value) -> Fraction:
    """The documented convention: an int as it is, a float as the decimal it prints as."""
    return Fraction(str(value)) if isinstance(value, float) else Fraction(value)


def expected_avg(L, K, V, T) -> int:
    """N = floor((L*T - K*V) / (L-K)), in integers: T = p/q, so N = (L*p - K*V*q) // ((L-K)*q)."""
    t = exact(T)
    return (L * t.numerator - K * V * t.denominator) // ((L - K) * t.denominator)


def expected_ratio(V, r) -> int:
    """N = round(r*V), halves up: r = p/q, so N = floor((2*p*V + q) / (2*q))."""
    f = exact(r)
    return (2 * f.numerator * V + f.denominator) // (2 * f.denominator)


def all_three(L, K, V, **budget):
    """N from the budget module, the runtime and the FLOPs module (the CLI is checked apart, below)."""
    return (
        keep_for_budget(L, K, V, **budget),
        PruneConfig(layer=K, **budget).resolve(L, V),
        F.resolve_keep(L, K, V, **budget),
    )


@st.composite
def model(draw):
    """L in [2, 80], any in-LLM layer K in [1, L-1], V in [1, 3000]."""
    L = draw(st.integers(2, 80))
    return L, draw(st.integers(1, L - 1)), draw(st.integers(1, 3000))


def usable_averages(L, K, V):
    """Averages T with 1 <= N <= V: integers, decimals of 1 to 3 places (as typed), any float, and
    decimals at or next to the exact average of some N (where a floor in float arithmetic goes wrong)."""
    low = float(Fraction(K * V + L - K, L))
    ints = st.integers(math.ceil(low), V)
    decimals = st.integers(1, 3).flatmap(
        lambda d: st.integers(math.ceil(low * 10**d), V * 10**d).map(lambda i: i / 10**d)
    )
    floats = st.floats(low, V, allow_nan=False, allow_infinity=False)
    step = st.integers(1, V).map(lambda n: Fraction(K * V + (L - K) * n, L))  # the exact average of N
    at_a_step = st.one_of(
        step.map(float),  # the float nearest it: its decimal may lie on either side
        st.tuples(step, st.integers(1, 3), st.integers(-1, 1)).map(
            lambda a: (round(a[0] * 10 ** a[1]) + a[2]) / 10 ** a[1]  # a short decimal at or next to it
        ),
    )
    return st.one_of(ints, decimals, floats, at_a_step)


# ----------------------------------------------------------------------------------- property tests


@SETTINGS
@given(model(), st.data())
def test_avg_tokens_is_exact(sizes, data):
    L, K, V = sizes
    T = data.draw(usable_averages(L, K, V))
    n = expected_avg(L, K, V, T)
    assume(1 <= n <= V and exact(T) <= V)  # T at the very ends of the range may fall outside it
    assert all_three(L, K, V, avg_tokens=T) == (n, n, n)


@SETTINGS
@given(model(), st.data())
def test_avg_tokens_out_of_range_is_an_error_everywhere(sizes, data):
    L, K, V = sizes
    low = Fraction(K * V + L - K, L)
    # below the smallest average that keeps one token (below 1 the budget itself is invalid), or above V
    T = data.draw(st.one_of(st.floats(0, float(low), exclude_max=True), st.floats(V, 10 * V, exclude_min=True)))
    assume(T < 1 or expected_avg(L, K, V, T) < 1 or exact(T) > V)
    for resolve in (
        lambda: keep_for_budget(L, K, V, avg_tokens=T),
        lambda: PruneConfig(layer=K, avg_tokens=T).resolve(L, V),
        lambda: F.resolve_keep(L, K, V, avg_tokens=T),
    ):
        with pytest.raises(ValueError):
            resolve()


@SETTINGS
@given(model(), st.data())
def test_ratio_is_exact(sizes, data):
    L, K, V = sizes
    r = data.draw(st.one_of(
        st.integers(1, 1000).map(lambda i: i / 1000),  # as typed
        st.floats(0, 1, exclude_min=True),
        st.just(1),
        st.integers(0, V - 1).map(lambda m: float(Fraction(2 * m + 1, 2 * V))),  # (nearly) a half: m.5 / V
    ))
    n = expected_ratio(V, r)
    assume(n >= 1)
    assert all_three(L, K, V, ratio=r) == (n, n, n)


@SETTINGS
@given(model(), st.data())
def test_avg_tokens_equivalent_inverts_the_rule_exactly(sizes, data):
    L, K, V = sizes
    n = data.draw(st.integers(1, V))
    avg = avg_tokens_equivalent(n, L, K, V)
    assert avg == Fraction(K * V + (L - K) * n, L)
    assert PruneConfig(layer=K, keep=n).avg_tokens_equivalent(n, L, V) == float(avg)
    assert F.average_tokens(L, K, V, n) == float(avg)
    # The exact average gives N back; so does an integer one, and the float just above it.
    assert all_three(L, K, V, avg_tokens=avg) == (n, n, n)
    if avg.denominator == 1:
        assert all_three(L, K, V, avg_tokens=int(avg)) == (n, n, n)
    if n < V:
        assert keep_for_budget(L, K, V, avg_tokens=float(avg) + 1e-9) == n


@SETTINGS
@given(model())
def test_the_range_in_the_error_message_is_usable(sizes):
    """The lower bound printed in the error keeps one token (it is rounded up, never down)."""
    L, K, V = sizes
    with pytest.raises(BudgetError) as err:
        keep_for_budget(L, K, V, avg_tokens=float(Fraction(K * V, L)) if K * V >= L else 0.5)
    low = re.search(r"in \[([0-9.]+), ", str(err.value))
    if low is not None:  # the budget itself may be invalid (< 1): then there is no range
        assert keep_for_budget(L, K, V, avg_tokens=float(low.group(1))) == 1


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 31), st.integers(1, 3000), st.data())
def test_at_32_layers_nothing_changes(K, V, data):
    """LLaVA-1.5-7B: the exact rule gives what the float formula gave for averages typed as decimals."""
    low = Fraction(K * V + 32 - K, 32)
    T = data.draw(st.integers(math.ceil(low * 10), V * 10).map(lambda i: i / 10))
    assert keep_for_budget(32, K, V, avg_tokens=T) == math.floor((32 * T - K * V) / (32 - K))


def test_every_layer_of_every_depth():
    """Every (L, K) with 2 <= L <= 80, 1 <= K <= L-1, at V = 576 and a few averages."""
    for L in range(2, 81):
        for K in range(1, L):
            low = Fraction(K * 576 + L - K, L)
            for T in {math.ceil(low), 576, 522.8, math.ceil(low) + 0.5, float(round((low + 576) / 2, 1))}:
                if not low <= exact(T) <= 576:
                    continue
                n = expected_avg(L, K, 576, T)
                assert all_three(L, K, 576, avg_tokens=T) == (n, n, n), (L, K, T)


# -------------------------------------------------------------------------------------- worked cases


def test_the_reported_disagreement():
    """L=15, K=1, T=522.8: (15*522.8 - 576) / 14 = (7842 - 576) / 14 = 519 exactly. Float arithmetic
    gave 518 at runtime; the exact rule gives 519 everywhere."""
    assert all_three(15, 1, 576, avg_tokens=522.8) == (519, 519, 519)
    assert keep_for_budget(15, 1, 576, avg_tokens=Fraction("522.8")) == 519
    assert math.floor((15 * 522.8 - 576) / 14) == 518  # what the float formula did


def test_the_papers_budgets():
    for T, n in ((192, 166), (128, 98), (64, 29)):
        assert all_three(32, 2, 576, avg_tokens=T) == (n, n, n)
        assert all_three(32, 2, 576, avg_tokens=float(T)) == (n, n, n)
    assert avg_tokens_equivalent(166, 32, 2, 576) == Fraction(6132, 32) == 191.625


def test_float_convention():
    assert as_fraction(522.8) == Fraction(5228, 10)  # the decimal, not the double 522.79999999999995...
    assert as_fraction(522.8) != Fraction(522.8)
    assert as_fraction(7) == 7 and as_fraction(Fraction(1, 3)) == Fraction(1, 3)
    assert as_fraction(1e-300) == Fraction(1, 10**300)


def test_vision_stage_floors_the_average():
    """K = 0: the rule is N = floor(T)."""
    assert keep_for_budget(32, 0, 576, avg_tokens=192) == 192
    assert keep_for_budget(32, 0, 576, avg_tokens=192.7) == 192
    assert F.resolve_keep(15, 0, 576, avg_tokens=522.8) == 522


def test_ratio_halves_round_up():
    assert keep_for_budget(32, 2, 25, ratio=0.58) == 15  # 14.5; float arithmetic gave 14.499999999999998 -> 14
    assert keep_for_budget(32, 2, 576, ratio=Fraction(1, 1152)) == 1
    assert keep_for_budget(32, 2, 4, ratio=0.125) == 1
    # A computed float means its printed decimal too: 0.5/576 prints as 0.0008680555555555555, just under
    # 1/1152, so it keeps 0 tokens (an error), where float arithmetic rounded it up to one.
    with pytest.raises(BudgetError, match=r"keeps 0 of 576 .* \[0.0008681, 1\]"):
        keep_for_budget(32, 2, 576, ratio=0.5 / 576)
    assert keep_for_budget(32, 2, 576, ratio=0.25) == 144


def test_errors_name_the_callers_flags():
    flags = {"keep": "--prune-keep", "avg_tokens": "--prune-avg-tokens", "ratio": "--prune-ratio"}
    with pytest.raises(BudgetError, match="--prune-avg-tokens 10 keeps -28 of 576") as err:
        keep_for_budget(32, 2, 576, avg_tokens=10, flags=flags)
    assert err.value.name == "avg_tokens" and err.value.value == 10
    with pytest.raises(BudgetError, match=r"avg_tokens 576.5 is more than the 576 visual tokens"):
        keep_for_budget(32, 2, 576, avg_tokens=576.5)
    with pytest.raises(BudgetError, match=r"\[39.3334, 576\]"):  # 590/15 = 39.333..., rounded up
        keep_for_budget(15, 1, 576, avg_tokens=39.3333)
    assert keep_for_budget(15, 1, 576, avg_tokens=39.3334) == 1
    with pytest.raises(BudgetError, match="exactly one token budget"):
        keep_for_budget(32, 2, 576)
    with pytest.raises(BudgetError, match=r"layer must be in \[0, 31\]"):
        keep_for_budget(32, 32, 576, keep=1)
    with pytest.raises(ValueError, match="num_visual"):
        keep_for_budget(32, 2, 0, keep=1)


# --------------------------------------------------------------------- the tools agree with the runtime


def _cli_keep(capsys, tmp_path, L, K, V, flag, value):
    (tmp_path / "config.json").write_text(json.dumps({"text_config": {"num_hidden_layers": L}}))
    argv = ["flops", "--model", str(tmp_path), "--layer", str(K), "--visual-tokens", str(V), flag, str(value),
            "--text-tokens", "10", "--json"]
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)["keep"]


@pytest.mark.parametrize(
    "L,K,V,flag,value",
    [
        (15, 1, 576, "--avg-tokens", 522.8),  # the reported case
        (32, 2, 576, "--avg-tokens", 192),
        (40, 2, 576, "--avg-tokens", 128),
        (7, 3, 100, "--avg-tokens", 61.3),
        (80, 79, 3000, "--avg-tokens", 2999.99),
        (23, 5, 1, "--avg-tokens", 1),
        (32, 2, 25, "--ratio", 0.58),
        (61, 30, 729, "--ratio", 0.333),
    ],
)
def test_flops_cli_keeps_what_the_runtime_keeps(capsys, tmp_path, L, K, V, flag, value):
    budget = {"avg_tokens": value} if flag == "--avg-tokens" else {"ratio": value}
    assert _cli_keep(capsys, tmp_path, L, K, V, flag, value) == PruneConfig(layer=K, **budget).resolve(L, V)


def test_efficiency_bench_checks_budgets_with_the_rule():
    from llava.bench import efficiency

    with pytest.raises(ValueError, match=r"--budgets 128.0 keeps -320 of 576 .* \[288.5, 576\]"):
        efficiency.main(["--arch", "tiny", "--budget-layers", "4", "--budgets", "128"])
