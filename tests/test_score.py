"""Token and layer matrix entropy (entropyprune.score) against hand-computed cases and independent
numpy references; the dual h x h form against the primal d_h x d_h form."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from entropyprune import score as S
from entropyprune.score import matrix_entropy, matrix_spectrum, token_entropy, token_entropy_primal

SETTINGS = settings(max_examples=40, deadline=None)


def np_paper_spectrum(heads: np.ndarray) -> np.ndarray:
    """Eq. 10-13 in float64 for one token [h, d_h], straight from the definitions.

    The one convention added is the documented round-off rule: a centred head whose norm is below
    4 (h + sqrt(d_h)) eps times the token's largest entry is zero (identical heads centre to noise).
    """
    h, d = heads.shape
    c = heads - heads.mean(axis=0, keepdims=True)
    norms = np.linalg.norm(c, axis=1, keepdims=True)
    floor = 4 * (h + math.sqrt(d)) * np.finfo(np.float64).eps * np.abs(heads).max()
    u = np.divide(c, norms, out=np.zeros_like(c), where=norms > floor)
    return np.linalg.eigvalsh(u.T @ u / h)  # primal d_h x d_h


def np_entropy(s: np.ndarray) -> float:
    s = s[s > 1e-15]
    return float(-(s * np.log(s)).sum())


def np_official(heads: np.ndarray) -> float:
    """The released code's score for one token [h, d_h], float64."""
    h = heads.shape[0]
    c = heads - heads.mean(axis=0, keepdims=True)
    s = np.clip(np.linalg.eigvalsh(c @ c.T / h), 1e-10, None)
    return float(-(s * np.log(s)).sum() / np.log(h))


def make_tokens(kind: str, tokens: int, h: int, d: int, scale: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, h, d, generator=g, dtype=torch.float64)
    if kind == "zero":
        x[0] = 0
    elif kind == "identical":
        x[0] = x[0, :1].expand(h, d)
    elif kind == "rank1":
        # v_j = a_j v: every centred head is a multiple of v, so one non-zero eigenvalue.
        x[0] = torch.randn(h, 1, generator=g, dtype=torch.float64) * x[0, :1]
    elif kind == "offset":
        # A common offset across heads is removed by centring.
        x = x + 50 * torch.randn(tokens, 1, d, generator=g, dtype=torch.float64)
    return x * scale


token_cases = st.tuples(
    st.sampled_from(["generic", "zero", "identical", "rank1", "offset"]),
    st.integers(1, 4),  # tokens
    st.integers(2, 16),  # h
    st.integers(2, 32),  # d_h, both below and above h
    st.floats(-3, 3),  # log10 scale
    st.integers(0, 2**31 - 1),
)


# ---------------------------------------------------------------------------- dual == primal
@SETTINGS
@given(token_cases)
def test_dual_and_primal_have_the_same_nonzero_spectrum(case):
    kind, tokens, h, d, log_scale, seed = case
    x = make_tokens(kind, tokens, h, d, 10.0**log_scale, seed)
    c = S._scaled_centred(x, torch.float64)
    dual = torch.linalg.eigvalsh(S._unit_gram(c, S._zero_floor(h, d, torch.float64)) / h)
    for t in range(tokens):
        primal = np.sort(np_paper_spectrum(x[t].numpy()))[::-1][: min(h, d)]
        ours = np.sort(dual[t].numpy())[::-1][: min(h, d)]
        np.testing.assert_allclose(ours, primal, atol=1e-10)
        assert (dual[t, : h - min(h, d)].abs() < 1e-10).all()  # surplus dual eigenvalues are zero


@SETTINGS
@given(token_cases)
def test_dual_and_primal_scores_agree(case):
    kind, tokens, h, d, log_scale, seed = case
    x = make_tokens(kind, tokens, h, d, 10.0**log_scale, seed)
    primal = token_entropy_primal(x, h)
    assert primal.dtype == torch.float64
    torch.testing.assert_close(token_entropy(x, h, dtype=torch.float64), primal, atol=1e-9, rtol=0)
    torch.testing.assert_close(token_entropy(x.float(), h).double(), primal, atol=5e-5, rtol=0)
    reference = torch.tensor([np_entropy(np_paper_spectrum(t.numpy())) for t in x], dtype=torch.float64)
    torch.testing.assert_close(primal, reference, atol=1e-9, rtol=0)


@SETTINGS
@given(token_cases)
def test_official_dual_and_primal_agree_up_to_the_floor(case):
    kind, tokens, h, d, log_scale, seed = case
    x = make_tokens(kind, tokens, h, d, 10.0**log_scale, seed)
    dual, primal = token_entropy(x, h, "official"), token_entropy_primal(x, h, "official")
    assert dual.dtype == torch.float64
    # Each clamped zero eigenvalue contributes 1e-10 * log(1e10); the forms clamp h vs d_h of them.
    floor_gap = abs(d - h) * 1e-10 * math.log(1e10) / math.log(h)
    scale = dual.abs().max().item()
    torch.testing.assert_close(dual, primal, atol=floor_gap + 1e-8 * max(scale, 1.0), rtol=0)


# ---------------------------------------------------------------------------- paper bounds and cases
@SETTINGS
@given(st.integers(2, 16), st.integers(2, 32), st.floats(-3, 3), st.integers(0, 2**31 - 1))
def test_paper_scores_lie_between_zero_and_log_rank(h, d, log_scale, seed):
    x = make_tokens("generic", 8, h, d, 10.0**log_scale, seed).float()
    scores = token_entropy(x, h)
    # Centring leaves rank <= h-1, so the bound log min(h-1, d_h) is tighter than log min(h, d_h).
    assert (scores >= 0).all()
    assert (scores <= math.log(min(h - 1, d)) + 1e-5).all()


@pytest.mark.parametrize("h", [2, 3, 4, 8, 32])
def test_max_entropy_for_orthonormal_heads(h):
    # Orthonormal heads centre to a regular simplex: all centred rows have the same norm and the
    # Gram is (I - 11^T/h) / (h-1), with h-1 eigenvalues 1/(h-1): entropy log(h-1), the maximum.
    d = h + 3
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(h), dtype=torch.float64))
    heads = q[:, :h].T
    assert token_entropy(heads, h).item() == pytest.approx(math.log(h - 1), abs=1e-5)
    assert token_entropy_primal(heads, h).item() == pytest.approx(math.log(h - 1), abs=1e-12)


def test_two_heads_always_score_zero():
    # h = 2: the centred heads are (v1 - v2)/2 and -(v1 - v2)/2, so the normalised rows are u and -u,
    # the Gram is [[1, -1], [-1, 1]] / 2 with eigenvalues {1, 0}, and the entropy is exactly 0.
    x = torch.randn(100, 2, 7, generator=torch.Generator().manual_seed(1))
    assert token_entropy(x, 2).abs().max() < 1e-6
    assert token_entropy_primal(x, 2).abs().max() < 1e-12


def test_four_heads_in_two_orthogonal_directions_score_log2():
    a, b = torch.tensor([3.0, 0, 0, 0, 0]), torch.tensor([0, 0, 2.0, 0, 0])
    heads = torch.stack([a, -a, b, -b]) + torch.tensor([1.0, 2, 3, 4, 5])  # the offset is centred away
    # Sigma = (a^ a^T + b^ b^T) / 2: eigenvalues {1/2, 1/2}.
    assert token_entropy(heads, 4).item() == pytest.approx(math.log(2), abs=1e-6)
    assert token_entropy_primal(heads, 4).item() == pytest.approx(math.log(2), abs=1e-12)


def test_degenerate_tokens_score_zero_and_finite():
    h, d = 4, 8
    x = torch.zeros(5, h, d)
    x[1] = 7.0  # every head identical
    x[2] = torch.arange(d, dtype=torch.float32)  # identical heads again, non-constant entries
    x[3] = torch.arange(h * d, dtype=torch.float32).reshape(h, d) * 1e-30  # tiny, rank-1 after centring
    x[4] = torch.linspace(-1, 1, h)[:, None] * torch.ones(d)  # rank 1
    for variant in ("paper", "official"):
        scores = token_entropy(x, h, variant)
        assert torch.isfinite(scores).all()
    # Rank 1 in float32 leaves eigenvalues ~1e-7 from round-off: -1e-7 log 1e-7 ~ 2e-6.
    assert token_entropy(x, h).abs().max() < 1e-5
    assert token_entropy_primal(x, h).abs().max() < 1e-12


def test_rounding_noise_in_identical_heads_is_not_signal():
    # h = 3 and 7: h * v rounds, so centring identical heads leaves ~eps noise instead of exact zeros.
    for h in (3, 7):
        v = torch.randn(50, 1, 16, generator=torch.Generator().manual_seed(h)) * 1e3
        assert token_entropy(v.expand(50, h, 16), h).abs().max() == 0


def test_a_single_zero_centred_row_keeps_the_gram_as_written():
    # Heads 0, v, 2v: centred -v, 0, v. The zero row contributes nothing and 1/h stays, so the one
    # eigenvalue is 2/3 (not renormalised to 1) and the score is -(2/3) log(2/3).
    v = torch.tensor([1.0, -2.0, 0.5])
    heads = torch.stack([0 * v, v, 2 * v])
    expected = -(2 / 3) * math.log(2 / 3)
    assert token_entropy(heads, 3).item() == pytest.approx(expected, abs=1e-6)
    assert token_entropy_primal(heads, 3).item() == pytest.approx(expected, abs=1e-12)


def test_score_is_scale_invariant_and_head_order_invariant():
    x = torch.randn(20, 8, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    base = token_entropy(x, 8, dtype=torch.float64)
    torch.testing.assert_close(token_entropy(x * 1e-20, 8, dtype=torch.float64), base)
    torch.testing.assert_close(token_entropy(x[:, torch.randperm(8)], 8, dtype=torch.float64), base)


# ---------------------------------------------------------------------------- official variant
def test_official_matches_its_definition_on_hand_made_inputs():
    rng = np.random.default_rng(0)
    cases = [
        rng.standard_normal((32, 128)),
        rng.standard_normal((4, 3)) * 100,
        np.eye(5, 6) * 0.01,  # small norms: several eigenvalues fall under the 1e-10 floor
        np.zeros((4, 8)),  # all clamped: 4 * 1e-10 * log(1e10) / log 4
        np.tile(rng.standard_normal(6), (3, 1)),  # identical heads
    ]
    for heads in cases:
        h = heads.shape[0]
        ours = token_entropy(torch.from_numpy(heads), h, "official").item()
        assert ours == pytest.approx(np_official(heads), rel=1e-9, abs=1e-12)
    assert token_entropy(torch.zeros(4, 8), 4, "official").item() == pytest.approx(
        4 * 1e-10 * math.log(1e10) / math.log(4), rel=1e-9
    )


def test_official_depends_on_norm_paper_does_not():
    x = torch.randn(6, 8, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert not torch.allclose(token_entropy(x, 8, "official"), token_entropy(2 * x, 8, "official"))
    torch.testing.assert_close(token_entropy(x, 8), token_entropy(2 * x, 8))


def test_official_centres_in_the_input_dtype_like_the_release():
    x = torch.randn(10, 4, 8, generator=torch.Generator().manual_seed(4)).half()
    c = (x - x.mean(dim=-2, keepdim=True)).double()
    s = torch.linalg.eigvalsh(c @ c.transpose(-1, -2) / 4).clamp_min(1e-10)
    expected = -(s * s.log()).sum(-1) / math.log(4)
    torch.testing.assert_close(token_entropy(x, 4, "official"), expected, rtol=1e-12, atol=0)


# ---------------------------------------------------------------------------- inputs and dtypes
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(dtype):
    x = torch.randn(30, 8, 16, generator=torch.Generator().manual_seed(5))
    xh = x.to(dtype)
    for variant in ("paper", "official"):
        scores = token_entropy(xh, 8, variant)
        assert torch.isfinite(scores).all()
    # The paper variant upcasts before centring: same as scoring the rounded values in float32.
    torch.testing.assert_close(token_entropy(xh, 8), token_entropy(xh.float(), 8))
    assert token_entropy(xh, 8).dtype == torch.float32


@pytest.mark.parametrize("scale", [1e30, 1e-30, 1e37])
def test_extreme_norms_are_finite_and_match_unit_scale(scale):
    x = torch.randn(30, 8, 16, generator=torch.Generator().manual_seed(6))
    big = x * scale
    assert torch.isfinite(big).all()
    scores = token_entropy(big, 8)
    assert torch.isfinite(scores).all()
    torch.testing.assert_close(scores, token_entropy(x, 8), atol=1e-5, rtol=0)
    assert torch.isfinite(token_entropy_primal(big, 8)).all()
    assert not token_entropy(big, 8, "official").isnan().any()


def test_both_layouts_and_batch_dims():
    x = torch.randn(2, 3, 8, 16, generator=torch.Generator().manual_seed(7))
    split = token_entropy(x, 8)
    assert split.shape == (2, 3)
    torch.testing.assert_close(token_entropy(x.reshape(2, 3, 128), 8), split)
    torch.testing.assert_close(token_entropy(x[0, 0], 8), split[0, 0])  # one token [h, d_h]
    torch.testing.assert_close(token_entropy(x[0, 0].reshape(-1), 8), split[0, 0])  # one token flat
    # Flat [h tokens, h * d_h] reads as one split token [h, h * d_h] unless head_dim says otherwise.
    eight = torch.randn(8, 64, generator=torch.Generator().manual_seed(8))
    assert token_entropy(eight, 8).shape == ()
    assert token_entropy(eight, 8, head_dim=8).shape == (8,)
    torch.testing.assert_close(token_entropy(eight, 8, head_dim=8), token_entropy(eight.reshape(8, 8, 8), 8))
    assert token_entropy(torch.empty(0, 8, 16), 8).shape == (0,)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="divisible"):
        token_entropy(torch.randn(5, 30), 8)
    with pytest.raises(ValueError, match="variant"):
        token_entropy(torch.randn(5, 8, 4), 8, variant="nope")
    with pytest.raises(ValueError, match="dtype"):
        token_entropy(torch.randn(5, 8, 4), 8, dtype=torch.float16)
    with pytest.raises(ValueError, match="neither"):
        token_entropy(torch.randn(5, 8, 4), 8, head_dim=5)
    with pytest.raises(ValueError, match="num_heads must be >= 2"):
        token_entropy(torch.randn(5, 4), 1)


def test_deterministic_and_threaded_solve_is_exact():
    x = torch.randn(576, 32, 128, generator=torch.Generator().manual_seed(8))
    a, b = token_entropy(x, 32), token_entropy(x, 32)
    assert torch.equal(a, b)
    assert torch.equal(token_entropy(x, 32, "official"), token_entropy(x, 32, "official"))
    gram = torch.randn(300, 12, 12, generator=torch.Generator().manual_seed(9))
    gram = gram @ gram.transpose(-1, -2)
    assert torch.equal(S.batched_eigvalsh(gram), torch.linalg.eigvalsh(gram))


# ---------------------------------------------------------------------------- layer-level entropy
def test_matrix_entropy_rank_one_is_zero():
    v = torch.randn(64, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    a = torch.randn(100, 1, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    x = a * v + torch.randn(64, dtype=torch.float64)  # affine line: centred rows are +-v
    assert matrix_entropy(x).item() == pytest.approx(0, abs=1e-12)
    assert matrix_entropy(x, alpha=2).item() == pytest.approx(0, abs=1e-12)


@pytest.mark.parametrize("d", [3, 16])
def test_matrix_entropy_isotropic_is_log_d(d):
    eye = torch.eye(d, dtype=torch.float64)
    x = torch.cat([eye, -eye])  # +-e_i: mean 0, Sigma = I/d
    assert matrix_entropy(x).item() == pytest.approx(math.log(d), abs=1e-12)
    assert matrix_entropy(x, alpha=2).item() == pytest.approx(math.log(d), abs=1e-12)
    torch.testing.assert_close(matrix_spectrum(x), torch.full((d,), 1 / d, dtype=torch.float64))
    sample = torch.randn(20000, d, generator=torch.Generator().manual_seed(d), dtype=torch.float64)
    assert matrix_entropy(sample).item() == pytest.approx(math.log(d), abs=0.01)


def test_renyi_matches_hand_computation():
    # Rows +-e1 (twice) and +-e2: mean 0, Sigma = diag(2/3, 1/3).
    e1, e2 = torch.eye(2, dtype=torch.float64)
    x = torch.stack([e1, -e1, 3 * e1, -3 * e1, e2, -e2])
    p = np.array([2 / 3, 1 / 3])
    assert matrix_entropy(x).item() == pytest.approx(float(-(p * np.log(p)).sum()), abs=1e-12)
    assert matrix_entropy(x, alpha=2).item() == pytest.approx(-math.log((p**2).sum()), abs=1e-12)
    assert matrix_entropy(x, alpha=0.5).item() == pytest.approx(2 * math.log(np.sqrt(p).sum()), abs=1e-12)
    torch.testing.assert_close(matrix_spectrum(x), torch.tensor(p, dtype=torch.float64))


@pytest.mark.parametrize("n,d", [(5, 40), (40, 5), (12, 12)])
def test_matrix_entropy_dual_and_primal_forms_agree(n, d):
    x = torch.randn(3, n, d, generator=torch.Generator().manual_seed(n * d), dtype=torch.float64)
    c = x - x.mean(dim=-2, keepdim=True)
    u = c / c.norm(dim=-1, keepdim=True)
    primal = torch.linalg.eigvalsh(u.transpose(-1, -2) @ u / n).flip(-1)[..., : min(n, d)]
    dual = torch.linalg.eigvalsh(u @ u.transpose(-1, -2) / n).flip(-1)[..., : min(n, d)]
    spectrum = matrix_spectrum(x)
    assert spectrum.shape == (3, min(n, d))
    torch.testing.assert_close(spectrum, primal.clamp_min(0), atol=1e-12, rtol=0)
    torch.testing.assert_close(spectrum, dual.clamp_min(0), atol=1e-12, rtol=0)
    assert (spectrum[..., :-1] >= spectrum[..., 1:]).all()  # descending
    expected = -torch.special.xlogy(primal.clamp_min(0), primal.clamp_min(0)).sum(-1)
    torch.testing.assert_close(matrix_entropy(x), expected, atol=1e-12, rtol=0)


def test_matrix_entropy_degenerate_and_errors():
    assert matrix_entropy(torch.ones(10, 4)).item() == 0
    assert matrix_entropy(torch.ones(10, 4), alpha=2).item() == 0
    assert torch.isfinite(matrix_entropy(torch.randn(10, 4) * 1e30, dtype=torch.float32))
    with pytest.raises(ValueError, match="alpha"):
        matrix_entropy(torch.randn(4, 4), alpha=0)
    with pytest.raises(ValueError, match=r"\[..., N, d\]"):
        matrix_entropy(torch.randn(4))
