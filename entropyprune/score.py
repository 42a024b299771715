"""Matrix entropy: per-token scores (dual Gram), the primal reference, and layer-level entropy.

Token score (paper, Eq. 7-14): split a token's query/key vector into its h head vectors, centre them
over heads, L2-normalise each centred head vector, and take the von Neumann entropy of
Sigma = (1/h) sum_j u_j u_j^T. Sigma (d_h x d_h, the primal form) and the Gram matrix
(1/h) M M^T (h x h, the dual form) share their non-zero eigenvalues, so the score is computed from
the h x h dual for all tokens in one batched eigen-solve.

Two variants are exposed:

* ``"paper"``: Eq. 10-14 as written: centre, L2-normalise rows, Gram / h, -sum s log s (0 log 0 = 0).
* ``"official"``: what the released code runs (and what produced the published numbers): centre only,
  no L2 normalisation, Gram / h in float64, eigenvalues clamped at 1e-10, -sum s log s divided by
  log h. Without normalisation the eigenvalues do not sum to one, so this score also grows with the
  token's norm; it is not a matrix entropy in the paper's sense. As in the release, the centring runs
  in the states' own dtype (fp16 in the model) and only the Gram and the solve in float64; a token
  with all heads equal scores h * 1e-10 * log(1e10) / log h, not 0. (The release also averages
  groups of head_dim / 128 dimensions first, a no-op for LLaVA's d_h = 128; that is not reproduced.)

Floating-point conventions of the paper variant (exact arithmetic is unaffected):

* Every token is first divided by its largest absolute entry (the score is scale-invariant), so
  squared norms neither overflow (1e30 in float32) nor underflow (1e-30).
* A centred head vector whose norm is at round-off level relative to that largest entry
  (``4 * (h + sqrt(d_h)) * eps`` of the compute dtype; centring identical heads leaves at most ~0.2 of
  that) is treated as exactly zero: otherwise heads that are equal up to rounding would be
  "normalised" into arbitrary unit directions and score high.
* A zero centred head vector (e.g. all heads equal, or an all-zero token) contributes nothing: the
  Gram keeps its 1/h factor and is not renormalised, so its trace is (#non-zero rows) / h, as Eq. 8
  reads with the 0/0 term taken as 0. A token whose heads are all equal scores exactly 0. Because
  centred rows sum to zero, there are either none or at least two non-zero rows. Exactly zero rows
  need exact coincidences (a head equal to the head mean), so real tokens always have trace 1; the
  price of not renormalising is that such a constructed token can score slightly above log(rank).
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

__all__ = [
    "VARIANTS",
    "batched_eigvalsh",
    "matrix_entropy",
    "matrix_spectrum",
    "token_entropy",
    "token_entropy_primal",
]

VARIANTS = ("paper", "official")

# The released code's eigenvalue floor (its log(0) guard).
OFFICIAL_EIG_FLOOR = 1e-10

# Below this many matrices a thread hand-off costs more than it saves.
_MIN_SPLIT = 64


def _split_heads(states: Tensor, num_heads: int, head_dim: int | None) -> Tensor:
    """Return ``states`` as ``[..., num_heads, head_dim]``, accepting the flat or the split layout."""
    if num_heads < 2:
        # One head has no spread to measure, and the official score divides by log h = 0.
        raise ValueError(f"num_heads must be >= 2, got {num_heads}")
    shape = tuple(states.shape)
    if len(shape) == 0:
        raise ValueError("states must have at least one dimension ([..., num_heads * head_dim])")
    split = len(shape) >= 2 and shape[-2] == num_heads
    if head_dim is not None:
        split = split and shape[-1] == head_dim
        if not split and shape[-1] != num_heads * head_dim:
            raise ValueError(
                f"states of shape {list(shape)} are neither [..., {num_heads}, {head_dim}] "
                f"nor [..., {num_heads * head_dim}]"
            )
    if split:
        return states
    if shape[-1] % num_heads:
        raise ValueError(
            f"states of shape {list(shape)}: last dim {shape[-1]} is not divisible by num_heads={num_heads}"
        )
    return states.reshape(*shape[:-1], num_heads, shape[-1] // num_heads)


def _compute_dtype(dtype: torch.dtype | None) -> torch.dtype:
    dtype = torch.float32 if dtype is None else dtype
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    return dtype


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown entropy variant {variant!r}; expected one of {', '.join(VARIANTS)}")


def _nonzero_divisor(x: Tensor) -> Tensor:
    # Dividing by 1 where x == 0 keeps zero rows at exactly zero instead of 0/0 = NaN.
    return torch.where(x > 0, x, torch.ones_like(x))


def _zero_floor(rows: int, dim: int, dtype: torch.dtype) -> float:
    """Squared norm at or below which a centred row counts as zero (input scaled to peak entry 1).

    Centring ``rows`` equal rows of length ``dim`` leaves noise of norm below ~0.2 (rows + sqrt(dim))
    eps (measured up to 100 x 4096, float32 and float64); the floor sits well above that and far below
    any real signal.
    """
    return (4 * (rows + math.sqrt(dim)) * torch.finfo(dtype).eps) ** 2


def _scaled_centred(x: Tensor, dtype: torch.dtype) -> Tensor:
    """A fresh ``dtype`` copy of ``[..., n, d]`` divided by its peak entry and centred over ``n``.

    The scores are scale-invariant; scaling to peak 1 keeps the mean and the squared norms far from
    overflow and underflow. Works in place on one fresh buffer because large allocations dominate
    the cost on CPU.
    """
    peak = torch.maximum(x.amax(dim=(-2, -1), keepdim=True), -x.amin(dim=(-2, -1), keepdim=True))
    scale = torch.where(peak > 0, peak.to(dtype).reciprocal(), torch.zeros((), dtype=dtype, device=x.device))
    # One pass both upcasts (fp16/bf16 * fp32 -> fp32) and scales; .to() is a no-op unless x was wider.
    out = torch.mul(x, scale).to(dtype)
    return out.sub_(out.mean(dim=-2, keepdim=True))


def _unit_rows(c: Tensor, floor: float) -> Tensor:
    """Rows of ``c`` divided by their L2 norm; rows with squared norm <= ``floor`` become 0 (Eq. 11)."""
    sq = torch.linalg.vector_norm(c, dim=-1, keepdim=True).square()
    inv = torch.where(sq > floor, sq.rsqrt(), torch.zeros_like(sq))
    return c * inv


def _unit_gram(c: Tensor, floor: float) -> Tensor:
    """Gram matrix U U^T of the L2-normalised rows of ``c``, formed as C C^T scaled by its diagonal.

    Same matrix as normalising the rows first, without another pass over the large tensor.
    """
    gram = torch.matmul(c, c.transpose(-1, -2))
    sq = gram.diagonal(dim1=-2, dim2=-1)
    inv = torch.where(sq > floor, sq.rsqrt(), torch.zeros_like(sq))
    return gram.mul_(inv.unsqueeze(-1)).mul_(inv.unsqueeze(-2))


def _centred_official(heads: Tensor) -> Tensor:
    # The release centres in the states' own dtype (fp16 in the model) and only then upcasts.
    if not heads.dtype.is_floating_point:
        heads = heads.to(torch.float32)
    return (heads - heads.mean(dim=-2, keepdim=True)).to(torch.float64)


_POOL_LOCK = threading.Lock()
_POOL: tuple[int, int, ThreadPoolExecutor] | None = None


def _pool(workers: int) -> ThreadPoolExecutor:
    # Keyed by pid: a pool inherited through fork() (e.g. by DataLoader workers) has no live threads.
    global _POOL
    with _POOL_LOCK:
        key = (os.getpid(), workers)
        if _POOL is None or _POOL[:2] != key:
            _POOL = (*key, ThreadPoolExecutor(max_workers=workers, thread_name_prefix="entropyprune-eig"))
        return _POOL[2]


def batched_eigvalsh(a: Tensor) -> Tensor:
    """Batched ``torch.linalg.eigvalsh`` (ascending), spread over the CPU threads.

    On CPU, torch solves a batch of small symmetric eigenproblems one matrix after another on one
    thread. Splitting the batch across ``torch.get_num_threads()`` Python threads (torch releases the
    GIL) runs the same LAPACK routine on each matrix, so the result is bitwise identical, only sooner.
    On other devices the batched kernel is used as is; note that on CUDA torch's eigen-solvers check
    their LAPACK status on the host, i.e. every call synchronises once with the device (torch offers
    no ``_ex`` variant of eigh). Scoring therefore costs one sync per pruned prefill.
    """
    workers = torch.get_num_threads()
    if a.device.type != "cpu" or workers < 2 or a.dim() < 3:
        return torch.linalg.eigvalsh(a)
    n = a.shape[-1]
    flat = a.reshape(-1, n, n)
    if flat.shape[0] < _MIN_SPLIT:
        return torch.linalg.eigvalsh(a)
    parts = list(_pool(workers).map(torch.linalg.eigvalsh, flat.chunk(workers)))
    return torch.cat(parts).reshape(a.shape[:-1])


def _shannon(eigs: Tensor) -> Tensor:
    """-sum s log s over the last dim with 0 log 0 = 0; round-off negatives (eigenvalues or result) -> 0."""
    s = eigs.clamp_min(0)
    h = -torch.special.xlogy(s, s).sum(dim=-1)
    # where() rather than clamp_min: it also turns -0.0 (from -sum of zeros) into +0.0.
    return torch.where(h > 0, h, torch.zeros_like(h))


def _official_entropy(eigs: Tensor, num_heads: int) -> Tensor:
    s = eigs.clamp_min(OFFICIAL_EIG_FLOOR)
    return -(s * s.log()).sum(dim=-1) / math.log(num_heads)


def token_entropy(
    states: Tensor,
    num_heads: int,
    variant: str = "paper",
    dtype: torch.dtype | None = None,
    *,
    head_dim: int | None = None,
) -> Tensor:
    """Matrix-entropy score of every token, from the h x h dual Gram matrix (Eq. 10-14).

    Args:
        states: ``[..., num_heads * head_dim]`` or ``[..., num_heads, head_dim]`` (any float dtype;
            fp16/bf16 are upcast). The split layout is assumed when ``states.shape[-2] == num_heads``;
            pass ``head_dim`` to disambiguate a flat input that happens to hold ``num_heads`` tokens.
        num_heads: h.
        variant: ``"paper"`` (Eq. 10-14) or ``"official"`` (the released code; see the module doc).
        dtype: float32 or float64. Paper variant: the compute and output dtype (default float32).
            Official variant: only the output dtype (default float64, the dtype it always computes
            in: its scores grow with the token's norm, so float32 could overflow or create ties
            that the released code, which ranks in float64, does not see).
        head_dim: optional d_h, only to resolve layout ambiguity.

    Returns:
        ``[...]`` scores, one per token.
    """
    _check_variant(variant)
    heads = _split_heads(states, num_heads, head_dim)
    if variant == "official":
        c = _centred_official(heads)
        gram = torch.matmul(c, c.transpose(-1, -2)).div_(num_heads)
        return _official_entropy(batched_eigvalsh(gram), num_heads).to(_compute_dtype(dtype or torch.float64))
    dtype = _compute_dtype(dtype)
    c = _scaled_centred(heads, dtype)
    gram = _unit_gram(c, _zero_floor(num_heads, heads.shape[-1], dtype)).div_(num_heads)
    return _shannon(batched_eigvalsh(gram))


def token_entropy_primal(
    states: Tensor,
    num_heads: int,
    variant: str = "paper",
    dtype: torch.dtype = torch.float64,
    *,
    head_dim: int | None = None,
) -> Tensor:
    """Reference score from the d_h x d_h covariance Sigma = (1/h) sum_j u_j u_j^T (Eq. 8-9).

    Same preprocessing and conventions as :func:`token_entropy`; only the spectral step differs.
    For ``"official"`` the floor 1e-10 is applied to all d_h eigenvalues instead of h, so every
    extra zero eigenvalue adds 1e-10 * log(1e10) ~ 2.3e-9 (before the / log h): the two forms then
    agree to about (d_h - h) * 2.3e-9 / log h, not exactly.
    """
    _check_variant(variant)
    dtype = _compute_dtype(dtype)
    heads = _split_heads(states, num_heads, head_dim)
    if variant == "official":
        c = _centred_official(heads)
        cov = torch.matmul(c.transpose(-1, -2), c) / num_heads
        return _official_entropy(batched_eigvalsh(cov), num_heads).to(dtype)
    u = _unit_rows(_scaled_centred(heads, dtype), _zero_floor(num_heads, heads.shape[-1], dtype))
    cov = torch.matmul(u.transpose(-1, -2), u) / num_heads
    return _shannon(batched_eigvalsh(cov))


def _token_covariance_spectrum(x: Tensor, dtype: torch.dtype) -> Tensor:
    """Ascending eigenvalues of the trace-normalised covariance of ``[..., N, d]`` tokens (Eq. 1).

    Uses the N x N dual when N <= d, else the d x d primal; both have min(N, d) eigenvalues kept.
    """
    if x.dim() < 2:
        raise ValueError(f"X must be [..., N, d], got shape {list(x.shape)}")
    n, d = x.shape[-2], x.shape[-1]
    if n < 1 or d < 1:
        raise ValueError(f"X must have at least one token and one feature, got shape {list(x.shape)}")
    c = _scaled_centred(x, dtype)
    floor = _zero_floor(n, d, dtype)
    if n <= d:
        mat = _unit_gram(c, floor)
    else:
        u = _unit_rows(c, floor)
        mat = torch.matmul(u.transpose(-1, -2), u)
    return batched_eigvalsh(mat.div_(n))


def matrix_spectrum(x: Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
    """Eigenvalues of the trace-normalised covariance (Eq. 1) of ``[..., N, d]``, sorted descending.

    Returns ``[..., min(N, d)]`` (the remaining eigenvalues are zero), round-off negatives clamped
    to 0. They sum to 1 unless some token equals the mean token (a zero centred row contributes
    nothing; the 1/N stays), and all are 0 when every token is the same.
    """
    return _token_covariance_spectrum(x, _compute_dtype(dtype)).clamp_min(0).flip(-1)


def matrix_entropy(x: Tensor, alpha: float = 1.0, dtype: torch.dtype = torch.float64) -> Tensor:
    """Order-alpha matrix entropy of a token matrix ``[..., N, d]`` (Eq. 1-4), one value per batch.

    alpha == 1: von Neumann entropy -sum s log s; otherwise Renyi log(sum s^alpha) / (1 - alpha).
    """
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    s = _token_covariance_spectrum(x, _compute_dtype(dtype)).clamp_min(0)
    if alpha == 1:
        return _shannon(s)
    total = s.pow(alpha).sum(dim=-1)
    # All tokens equal leaves an all-zero spectrum; score it 0 as the alpha = 1 branch does.
    return torch.where(total > 0, torch.log(_nonzero_divisor(total)) / (1 - alpha), torch.zeros_like(total))
